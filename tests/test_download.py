"""asd.data.download against a real local HTTP server: extraction, skipping, and clean failures."""

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from asd.data.download import completion_marker, download_dataset, official_urls
from asd.errors import AsdError


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path == "/broken-off.zip":  # announces more bytes than it sends, then hangs up
            body = (Path(self.directory) / "dev_fan.zip").read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/served on 127.0.0.1 at an ephemeral port; yields (base_url, served_dir, requests)."""
    served = tmp_path / "served"
    served.mkdir()
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *args: _Handler(*args, directory=str(served))
    )
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served, _Handler.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def make_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path.read_bytes()


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_download_extracts_merges_and_skips_on_rerun(server, tmp_path):
    base, served, requests = server
    dev_fan = make_zip(served / "dev_fan.zip", {
        "fan/train/section_00_source_train_normal_0000_a_1.wav": b"RIFF-train",
        "fan/attributes_00.csv": b"file_name\n",
    })
    make_zip(served / "eval_data_fan_test.zip", {"fan/test/section_00_0000.wav": b"RIFF-test"})
    urls = [f"{base}/dev_fan.zip", f"{base}/eval_data_fan_test.zip"]
    dest = tmp_path / "raw"
    outcome = download_dataset(
        urls=urls, dest_root=dest, sha256={"dev_fan.zip": hashlib.sha256(dev_fan).hexdigest()}, progress=False
    )
    assert outcome == {urls[0]: "downloaded", urls[1]: "downloaded"}
    assert (dest / "fan/train/section_00_source_train_normal_0000_a_1.wav").read_bytes() == b"RIFF-train"
    assert (dest / "fan/test/section_00_0000.wav").read_bytes() == b"RIFF-test"
    assert files_under(dest) == [
        ".dev_fan.zip.complete", ".eval_data_fan_test.zip.complete", "fan/attributes_00.csv",
        "fan/test/section_00_0000.wav", "fan/train/section_00_source_train_normal_0000_a_1.wav",
    ]
    assert [path.name for path in dest.iterdir() if path.is_dir()] == ["fan"]  # no temporary folders left
    assert requests == ["/dev_fan.zip", "/eval_data_fan_test.zip"]
    assert download_dataset(urls=urls, dest_root=dest, progress=False) == {url: "skipped" for url in urls}
    assert len(requests) == 2  # the rerun asked the server nothing


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", "not a valid zip"),
        ("broken-off", r"received \d+ bytes, the server announced \d+; the connection broke off"),
        ("wrong-sha256", "SHA-256 is [0-9a-f]{64}, expected 0000"),
        ("damaged-member", r"member fan/train/a\.wav of the zip is damaged"),
        ("damaged-deflate", "(not a valid zip|of the zip is damaged)"),
    ],
)
def test_failed_download_leaves_nothing_that_looks_complete(server, tmp_path, case, message):
    base, served, _ = server
    compression = zipfile.ZIP_DEFLATED if case == "damaged-deflate" else zipfile.ZIP_STORED
    members = {"fan/train/a.wav": b"x" * 500, "fan/test/b.wav": b"y" * 500}
    good = make_zip(served / "dev_fan.zip", members, compression)
    name, sha256 = "dev_fan.zip", None
    if case == "truncated":
        (served / "truncated.zip").write_bytes(good[: len(good) // 2])
        name = "truncated.zip"
    elif case == "broken-off":
        name = "broken-off.zip"
    elif case == "wrong-sha256":
        sha256 = {"dev_fan.zip": "0" * 64}
    else:  # flip a byte inside the first member's data (after its 30 + 15 byte local header)
        damaged = bytearray(good)
        damaged[47] ^= 0xFF
        (served / "damaged.zip").write_bytes(bytes(damaged))
        name = "damaged.zip"
    url = f"{base}/{name}"
    dest = tmp_path / "raw"
    with pytest.raises(AsdError, match=url.replace(".", r"\.") + ": .*" + message):
        download_dataset(urls=[url], dest_root=dest, sha256=sha256, progress=False)
    assert not completion_marker(dest, url).exists()
    assert files_under(dest) == []  # no zip part, no extracted member, no marker


def test_http_error_and_unreachable_server_are_clear(server, tmp_path):
    base, _, _ = server
    with pytest.raises(AsdError, match=r"missing\.zip: the server answered HTTP 404"):
        download_dataset(urls=[f"{base}/missing.zip"], dest_root=tmp_path / "raw", progress=False)
    with pytest.raises(AsdError, match="cannot connect"):
        download_dataset(urls=["http://127.0.0.1:9/dev_fan.zip"], dest_root=tmp_path / "raw", progress=False)
    assert files_under(tmp_path / "raw") == []


def test_official_urls():
    assert official_urls("dev", ["fan", "ToyCar"]) == [
        "https://zenodo.org/records/15097779/files/dev_fan.zip",
        "https://zenodo.org/records/15097779/files/dev_ToyCar.zip",
    ]
    assert official_urls("eval", ["Polisher"]) == [
        "https://zenodo.org/records/15392814/files/eval_data_Polisher_train.zip",
        "https://zenodo.org/records/15519362/files/eval_data_Polisher_test.zip",
    ]
    assert len(official_urls("dev")) == 7 and len(official_urls("eval")) == 16
    with pytest.raises(AsdError, match="use dev or eval"):
        official_urls("test")
