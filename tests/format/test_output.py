"""Safe outputs: refusals, umask, atomic replacement, temporary files after SIGTERM and SIGKILL."""

import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from xorsparse.cli import main
from xorsparse.format import safetensors_io as st
from xorsparse.format.output import OutputError, atomic_dir, atomic_file, check_output, clean_stale, temp_name


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _temps(folder):
    return [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def test_refusals(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"input")
    with pytest.raises(OutputError, match=r"a.bin: is the same file as the input"):
        check_output(a, [a], force=True)
    hard = tmp_path / "hard.bin"
    os.link(a, hard)
    with pytest.raises(OutputError, match=r"hard.bin: is the same file as the input .*a.bin"):
        check_output(hard, [a], force=True)
    link = tmp_path / "link.bin"
    link.symlink_to(a)
    with pytest.raises(OutputError, match=r"link.bin: is a symbolic link"):
        check_output(link, [], force=False)
    with pytest.raises(OutputError, match=r"link.bin: is the same file as the input"):
        check_output(link, [a], force=True)
    with pytest.raises(OutputError, match=r"a.bin: already exists \(use --force"):
        check_output(a, [], force=False)
    assert check_output(a, [], force=True) == str(a)
    with pytest.raises(OutputError, match=r"is a directory"):
        check_output(tmp_path, [], force=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match=r"fifo: is not a regular file"):
        check_output(fifo, [], force=True)
    with pytest.raises(OutputError, match=r"nothere/x.bin: cannot write: folder .*nothere does not exist"):
        check_output(tmp_path / "nothere" / "x.bin", [])
    assert a.read_bytes() == b"input"


def test_device_node_is_refused(tmp_path):
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here (not root)")
    with pytest.raises(OutputError, match=r"null: is not a regular file \(a device"):
        with atomic_file(dev, force=True) as f:
            f.write(b"x")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_forced_symlink_writes_its_target(tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    with atomic_file(link, force=True) as f:
        f.write(b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        st.write(tmp_path / "o.safetensors", [st.array_entry("x", np.zeros(3, np.float32))])
        with atomic_dir(tmp_path / "folder") as d:
            open(os.path.join(d, "f"), "w").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "o.safetensors").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "folder").st_mode) == mode | 0o111 & ~umask


def test_failed_write_leaves_nothing_and_names_the_users_path(tmp_path):
    out = tmp_path / "o.bin"
    out.write_bytes(b"precious")
    with pytest.raises(RuntimeError):
        with atomic_file(out) as f:
            f.write(b"partial")
            raise RuntimeError("producer failed")
    assert out.read_bytes() == b"precious" and not _temps(tmp_path)
    with pytest.raises(OutputError, match=r"^\S*missing/o.bin: cannot write"):
        st.write(tmp_path / "missing" / "o.bin", [st.array_entry("x", np.zeros(3, np.float32))])


def test_atomic_dir(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out, force=False) as d:
        open(os.path.join(d, "a.xsp"), "wb").write(b"1")
        assert not out.exists()
    assert (out / "a.xsp").read_bytes() == b"1"
    with pytest.raises(OutputError, match="already exists"):
        with atomic_dir(out, force=False):
            pass
    with atomic_dir(out, force=True) as d:
        open(os.path.join(d, "b.xsp"), "wb").write(b"2")
    assert sorted(os.listdir(out)) == ["b.xsp"] and not _temps(tmp_path)
    src = out / "b.xsp"
    with pytest.raises(OutputError, match="holds the input"):
        with atomic_dir(out, inputs=[src], force=True):
            pass
    assert src.read_bytes() == b"2"


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path, caplog):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs
    stale = tmp_path / temp_name("m.xsp").replace(f"-{os.getpid()}-", f"-{child.pid}-")
    stale.write_bytes(b"half")
    mine = tmp_path / temp_name("n.xsp")  # this process is alive: kept
    mine.write_bytes(b"busy")
    other = tmp_path / ".tmp-unrelated"
    other.write_bytes(b"not ours")
    with caplog.at_level(logging.WARNING, logger="xorsparse"):
        assert clean_stale(tmp_path) == [str(stale)]
    assert "left by an interrupted write" in caplog.text
    assert mine.exists() and other.exists() and not stale.exists()
    mine.unlink()
    other.unlink()


# --- the command line ---------------------------------------------------------------------------


def test_cli_refuses_to_clobber(st_file, tmp_path, capsys):
    x = str(tmp_path / "x.xsp")
    assert run(capsys, "compress", st_file, x)[0] == 0
    before = open(x, "rb").read()
    for args in (["decompress", x, x], ["decompress", "--force", x, x]):
        code, _, err = run(capsys, *args)
        assert code == 2 and "is the same file as the input" in err and err.count("\n") == 1
    assert open(x, "rb").read() == before
    code, _, err = run(capsys, "compress", st_file, x)
    assert code == 2 and "already exists (use --force" in err
    assert run(capsys, "compress", "--force", st_file, x)[0] == 0
    # a symlink to the input's folder: same file, refused even with --force
    folder = os.path.dirname(st_file)
    link = tmp_path / "link"
    link.symlink_to(folder)
    same = str(link / os.path.basename(st_file))
    src_bytes = open(st_file, "rb").read()
    code, _, err = run(capsys, "compress", "--force", st_file, same)
    assert code == 2 and "is the same file as the input" in err
    assert open(st_file, "rb").read() == src_bytes
    lnk = tmp_path / "out-link.xsp"
    lnk.symlink_to(tmp_path / "elsewhere.xsp")
    code, _, err = run(capsys, "compress", st_file, str(lnk))
    assert code == 2 and "is a symbolic link" in err
    assert run(capsys, "compress", "-f", st_file, str(lnk))[0] == 0 and (tmp_path / "elsewhere.xsp").exists()
    fifo = tmp_path / "fifo.xsp"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "decompress", "-f", x, str(fifo))
    assert code == 2 and "is not a regular file" in err and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    code, _, err = run(capsys, "decompress", x, str(tmp_path / "no" / "d.safetensors"))
    assert code == 2 and "no/d.safetensors: cannot write: folder" in err and ".tmp-" not in err


def test_reading_a_fifo_does_not_block(tmp_path, capsys):
    fifo = tmp_path / "in.xsp"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "verify", str(fifo))
    assert code == 2 and "not a regular file" in err


SLOW_COMPRESS = textwrap.dedent("""
    import sys, time
    from xorsparse.format import safetensors_io as st
    orig = st.Entry.payload
    def slow(self):
        time.sleep(0.2)  # a slow disk: the signal arrives while the output is being written
        return orig(self)
    st.Entry.payload = slow
    from xorsparse.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _compress_until_writing(st_file, out):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COMPRESS, "compress", st_file, out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folder = os.path.dirname(out)
    t0 = time.time()
    while not _temps(folder):
        assert proc.poll() is None and time.time() - t0 < 120, "compress ended before writing"
        time.sleep(0.02)
    return proc


def test_sigterm_during_compress_removes_the_temporary_file(st_file, tmp_path):
    out = str(tmp_path / "m.xsp")
    proc = _compress_until_writing(st_file, out)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert not _temps(tmp_path) and not os.path.exists(out)


def test_sigkilled_compress_leaves_nothing_after_the_next_run(st_file, tmp_path, capsys):
    out = str(tmp_path / "m.xsp")
    proc = _compress_until_writing(st_file, out)
    proc.kill()
    proc.wait(timeout=60)
    assert _temps(tmp_path) and not os.path.exists(out)  # what SIGKILL leaves
    code, _, err = run(capsys, "compress", st_file, out)
    assert code == 0 and not _temps(tmp_path)
    assert "left by an interrupted write" in err
