"""Several gateway processes behind one port (``twistd -n moltbot-gw --workers N``): the
parent that binds the port and supervises the workers (``parent``), and what a worker does
differently from a lone gateway (``worker``). docs/operations.rst, "Several workers".
"""
