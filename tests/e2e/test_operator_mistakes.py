"""An operator's mistakes through the real command: each is one line on
stderr that says what to do, and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import cli, uid
from ops_helpers import invoke


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_missing_file_or_a_folder_is_refused_in_one_line(env, tmp_path: Path) -> None:
    missing = cli(env, "stock", "import", "nonexist.csv", check=False)  # the real executable
    assert missing.returncode == 2
    assert "'nonexist.csv' does not exist" in one_line(missing.stderr)
    folder = invoke(env, "stock", "import", str(tmp_path), code=2)
    assert "is a directory" in one_line(folder.stderr)
    assert "checkout-saga stock import --help" in folder.stderr


@pytest.mark.parametrize(("csv", "said"), [
    ("sku,price\nA,1\n", "no column quantity in the header (sku,price); it must name sku,price,quantity"),
    ("sku,price,quantity\nA,100,2\nB,100,abc\n", ":3: column quantity has 'abc'; expected a whole number"),
    ("sku,price,quantity\nA,-5,2\n", ":2: column price has '-5'; expected a whole number of cents"),
    ("sku,price,quantity\n,100,2\n", ":2: column sku has nothing; expected a product code"),
    ("sku,price,quantity\nA,100\n", ":2: column quantity has nothing"),
    ("", "is empty; the first line must be sku,price,quantity"),
])
def test_a_bad_csv_row_names_its_line_column_and_what_is_expected(
        env, tmp_path: Path, csv: str, said: str) -> None:
    sku = uid("CSV")
    path = tmp_path / "stock.csv"
    path.write_text(csv.replace("A,", f"{sku},"))
    result = invoke(env, "stock", "import", str(path), code=2)
    assert said in one_line(result.stderr)
    assert invoke(env, "stock", "show", sku, code=1).exit_code == 1  # nothing imported


def test_headers_ignore_case_and_spaces_and_a_byte_order_mark(env, tmp_path: Path) -> None:
    sku = uid("CSV")
    path = tmp_path / "stock.csv"
    path.write_text(f" SKU , Price,QUANTITY\n{sku}, 250 , 7\n\n", encoding="utf-8-sig")
    invoke(env, "stock", "import", str(path))
    shown = invoke(env, "stock", "show", sku, "--json").stdout
    assert '"price": 250' in shown and '"available": 7' in shown
    binary = tmp_path / "stock.xlsx"
    binary.write_bytes(b"sku,price,quantity\n\xff\xfe\x00")
    refused = invoke(env, "stock", "import", str(binary), code=2)
    assert "is not UTF-8 text" in one_line(refused.stderr)


def test_analytics_refuses_a_port_out_of_range_and_a_port_in_use(env) -> None:
    out_of_range = cli(env, "analytics", "--port", "80000", check=False)
    assert out_of_range.returncode == 2
    assert "--port': Input should be less than or equal to 65535" in one_line(out_of_range.stderr)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = invoke(env, "analytics", "--port", str(port), code=2)
    line = one_line(in_use.stderr)  # and no dashboard URL printed before it
    assert f"127.0.0.1:{port} is in use; choose another with --port" in line


def test_a_bad_setting_in_the_environment_is_one_line(env) -> None:
    result = invoke({**env, "CHECKOUT_PARTITIONS": "many"}, "topics", "create", "--dry-run", code=2)
    assert "CHECKOUT_PARTITIONS='many': Input should be a valid integer" in one_line(result.stderr)
    negative = invoke(env, "saga", "list", "--limit", "0", code=2)
    assert "--limit" in one_line(negative.stderr)
    unknown = invoke(env, "stok", code=2)
    assert "No such command 'stok'" in one_line(unknown.stderr)


def test_promo_create_refuses_an_expired_time_and_unknown_skus(env) -> None:
    sku = uid("SKU-PR")
    invoke(env, "stock", "set", sku, "--price", "100")
    code = uid("PR").upper()
    expired = cli(env, "promo", "create", code, "--percent-off", "10", "--max-uses", "1",
                  "--expires-at", "2020-01-01T00:00:00Z", check=False)
    assert expired.returncode == 2
    assert "2020-01-01T00:00:00Z is in the past" in one_line(expired.stderr)
    ghost = uid("GHOST")
    unknown = invoke(env, "promo", "create", code, "--percent-off", "10", "--max-uses", "1",
                     "--skus", f"{sku},{ghost}", code=2)
    assert f"SKU(s) not in inventory: {ghost};" in one_line(unknown.stderr)
    invoke(env, "promo", "show", code, code=1)  # neither was created
    invoke(env, "promo", "create", code, "--percent-off", "10", "--max-uses", "1",
           "--skus", sku, "--expires-at", "2999-01-01")


@pytest.mark.parametrize(("args", "said"), [
    (("--brokers", "2"), "brokers must be 1 or 3"),
    (("--broker-kills", "1"), "killing a broker needs a cluster that outlives it"),
])
def test_a_chaos_plan_that_cannot_run_is_refused_before_anything_starts(
        env, args: tuple[str, ...], said: str) -> None:
    result = invoke(env, "chaos", *args, code=None)
    assert result.exit_code != 0
    assert said in one_line(result.stderr)
