"""The deployment's declarations: feeds, sinks, routes and exports as component YAML (``defs.yaml``).

``dg list defs`` shows what they build; ``dg check yaml`` checks them; ``dg scaffold defs
pipelines.components.Feed feeds/<name>`` starts a new one.
"""
