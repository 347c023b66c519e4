"""Server-side tools an agent may call: the interface (``base.py``), the built-in tools, and
which of them each agent may use. Transport-free, like ``agents/``."""
