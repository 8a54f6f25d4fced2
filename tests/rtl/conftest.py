import pytest

from xorsparse.rtl.sim import available_simulators

SKIP_NO_SIM = ("no Verilog simulator (Icarus Verilog or Verilator) on this machine: co-simulation skipped; "
               "`make test` installs Debian's iverilog when it runs as root with apt")


@pytest.fixture
def simulator() -> str:
    have = available_simulators()
    if not have:
        pytest.skip(SKIP_NO_SIM)
    return have[0]
