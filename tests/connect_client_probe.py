"""A Spark Connect client that posts rows one by one from the server's Python workers until it is killed.

    python tests/connect_client_probe.py <sc://url> <sink url> <index> <rows>

Run by test_spark_connect in a subprocess that the test kills with SIGKILL: a run's process that
dies without ending its session.
"""

import sys

from resources.spark import connect_session


def post_each_row(url: str, index: str):
    def post(batches):
        import requests

        with requests.Session() as http:
            for batch in batches:
                for i in batch.column("id").to_pylist():
                    body = f'{{"index":{{"_index":"{index}","_id":"{i}"}}}}\n{{"n":{i}}}\n'
                    http.post(
                        f"{url}/_bulk",
                        data=body,
                        headers={"Content-Type": "application/x-ndjson"},
                        timeout=30,
                    )
                yield batch

    return post


def main(remote: str, sink: str, index: str, rows: int) -> None:
    session = connect_session(remote)
    session.range(0, rows, 1, 2).mapInArrow(post_each_row(sink, index), "id long").toArrow()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
