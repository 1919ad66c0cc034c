"""The lab engine: a Topology turned into namespaces, veths and processes, and back.

The only code that starts, signals or deletes anything: processes by pid
(:mod:`.processes`), namespaces and links from the state file (:mod:`.state`,
:mod:`.network`), a whole lab by :class:`.lab.Lab`."""
