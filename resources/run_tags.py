"""The run tags (and failure-metadata key) lakerelay's jobs set and its sensors read: one home for each.

Resources sit below pipelines and sensors, so every layer can import these from here.
"""

FEED_TAG = "lakerelay/feed"  # every run of one feed: ingest, relay, post, continuous
SINK_TAG = "lakerelay/sink"
ROUTE_TAG = "lakerelay/route"  # post runs of one route (a feed to a sink, under the route's name)
RELAY_TAG = "lakerelay/relay"  # runs of pipelines/relay.py: ingest, then post on every route
CONTINUOUS_TAG = "lakerelay/continuous"  # the feed's name, on every continuous run
CODE_VERSION_TAG = "lakerelay/code_version"  # a continuous run's code; another version replaces it
REPLACED_TAG = "lakerelay/continuous_replaced"  # set by the keeper on a continuous run it terminates
DELTA_VERSION_TAG = "lakerelay/delta_version"  # the table version a table sensor's run request saw
REPLAY_TAG = "lakerelay/replay"  # dead-letter replay runs
# Failure metadata key and run tag for failures only a person can fix: the sensors back off longest.
NEEDS_FIX = "lakerelay/needs_fix"
