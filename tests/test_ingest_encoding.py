"""Invalid bytes cost a line, not a file: in a UTF-8 text feed the lines that do not decode are
quarantined with their raw bytes, and the rest of the file lands."""

from pathlib import Path

import orjson

from pipelines.feeds import CsvOptions, FeedSpec
from pipelines.ingest.runner import ingest_feed

from helpers import delta_table, land_file, local_lake


def test_lines_that_are_not_utf8_are_quarantined_with_their_bytes_and_the_rest_of_the_file_lands(
    tmp_path: Path,
) -> None:
    lake = local_lake(tmp_path)
    lines = [orjson.dumps({"id": i, "city": "Zürich"}) for i in range(279)]
    latin1 = {40: "Zürich", 41: "Gruß", 200: "Málaga"}
    for index, city in latin1.items():
        lines[index] = b'{"id": %d, "city": "%s"}' % (index, city.encode("latin-1"))
    path = land_file(lake, "f", "mixed.json", b"\n".join(lines) + b"\n")

    report = ingest_feed(FeedSpec(name="f", source="f"), lake)

    assert (report.quarantined, report.rows, report.bad_records) == ([], 276, 3)
    table = delta_table(lake, "f")
    assert sorted(table["id"].to_pylist()) == [i for i in range(279) if i not in latin1]
    assert set(table["city"].to_pylist()) == {"Zürich"}
    quarantine = delta_table(lake, "_lakerelay/quarantine/f").sort_by("line").to_pylist()
    assert [(q["source_file"], q["line"], q["kind"]) for q in quarantine] == [
        (str(path), index + 1, "bad_record") for index in latin1
    ]
    assert [q["raw_data"] for q in quarantine] == [lines[index] for index in latin1]  # the bytes, exactly
    assert "Z\\xfcrich" in quarantine[0]["raw_text"] and "not valid UTF-8" in quarantine[0]["error"]


def test_a_csv_line_that_is_not_utf8_costs_that_line(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_file(lake, "c", "a.csv", "id,name\n1,Anna\n2,Jürgen\n3,Zoë\n".encode() + b"4,\xc5ukasz\n5,Eve\n")

    report = ingest_feed(FeedSpec(name="c", source="c", format="csv", csv=CsvOptions()), lake)

    assert (report.quarantined, report.bad_records) == ([], 1)
    assert sorted(delta_table(lake, "c")["name"].to_pylist()) == ["Anna", "Eve", "Jürgen", "Zoë"]
    [bad] = delta_table(lake, "_lakerelay/quarantine/c").to_pylist()
    assert (bad["line"], bad["raw_data"]) == (5, b"4,\xc5ukasz")


def test_a_json_array_file_that_is_not_utf8_is_still_quarantined_whole(tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    land_file(lake, "a", "a.json", '[{"city": "Zürich"}]'.encode("latin-1"))

    report = ingest_feed(FeedSpec(name="a", source="a", format="json_array"), lake)

    assert [q.error.split(" (")[0] for q in report.quarantined] == ["not valid UTF-8 at byte 12"]
