"""The runtime's core: lanes (pure bookkeeping), timers, dispatcher, context, watchdog."""
