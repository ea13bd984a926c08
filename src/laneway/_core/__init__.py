"""The runtime's core: the facade, dispatcher, slot source and lanes, attempts,
policy, runners, context, timers, reaper, monitor, events and watchdog."""
