"""The commands, one module per resource. Each module has a cmd_* function
per command (args, client → exit code) and register(sub), which declares the
commands' arguments and help on the subparsers `sub`:

- services: socklb service put|get|list|delete
- backends: socklb backend set|add|remove|drain
- policies: socklb workload|policy|redirect put|get|list|delete
- nodes: socklb node list, socklb stats
- terminations: socklb terminate, socklb termination get|list
- watch: socklb watch
"""
