"""Synthetic agents' requests: function tools built procedurally, and a message asking for one call.

``catalogue.py`` holds the word lists (domains, parameters, phrasings), ``tools.py`` turns them into tool
definitions and argument values, ``prompt.py`` writes the request. A fixed handful of tools and templates
let a miner recognise every synthetic agent's request by its tool set and answer from a table.
"""

from neurons.validator.agents.prompt import agent_prompt

__all__ = ["agent_prompt"]
