"""The code verifier: functional rules, then attacks that must stay inside the sandbox.

Each attack problem expects a random `token` on stdout that the program could only print by
escaping (the token sits in a host file, the scorer's environment, a host socket or a host
process). So reward 0 shows the attack failed; host-side asserts show nothing changed, and
the stderr check shows the attack code really ran.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from openk1.rewards.code import (
    extract_program,
    limits_for,
    make_code_verifier,
    normalize_output,
    results_match,
    verify_code,
)
from openk1.sandbox import INSTALL_HINT, Limits, Sandbox
from openk1.types import Problem

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason=INSTALL_HINT)
FAST = Limits(wall_s=1.5, cpu_s=1.0, memory_mb=256, processes=8)
REPO = Path(__file__).resolve().parents[2]
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"


@pytest.fixture(scope="module")
def box() -> Sandbox:
    return Sandbox()


def _fence(source: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{source}```\n"


def _stdio(*cases: tuple[str, str], **extra: object) -> Problem:
    tests = tuple({"input": i, "output": o} for i, o in cases)
    return Problem("p", "", "code", tests=tests, extra=dict(extra))


def _attack(box: Sandbox, source: str, token: str, limits: Limits = FAST):
    """Score `source` on one test whose expected output is `token`; then check the scorer."""
    score = verify_code(_fence(source), _stdio(("", token)), limits=limits, sandbox=box)
    alive = verify_code(_fence(ADD), _stdio(("2 3", "5")), limits=FAST, sandbox=box)
    assert alive.reward == 1.0, "the scorer must keep working after an attack"
    return score


# ---------------------------------------------------------------- functional rules


def test_extract_last_block_and_language() -> None:
    text = "```python\nprint(1)\n```\nthen\n```cpp\nint main(){}\n```\n```text\nout\n```"
    assert extract_program(text) == ("cpp", "int main(){}\n")
    assert extract_program("```\nprint(2)\n```") == ("python", "print(2)\n")
    assert extract_program("```py\nx\n```\n```c++\ny\n```") == ("cpp", "y\n")
    assert extract_program("no code, or an unclosed ```python\nprint(1)") is None


def test_normalize_strips_trailing_space_and_blank_lines() -> None:
    assert normalize_output("3  \n4\t\n\n\n") == "3\n4"
    assert normalize_output(" 3") == " 3"  # leading space is kept


def test_ac_and_wa_by_line_stripping_rule(box: Sandbox) -> None:
    ac = verify_code(_fence("print('1  ')\nprint(2)\nprint()\n"), _stdio(("", "1\n2")), sandbox=box)
    assert (ac.reward, ac.verdict, ac.details["verdicts"]) == (1.0, "accepted", ["AC"])
    wa = verify_code(_fence("print('1 2')\n"), _stdio(("", "1\n2")), sandbox=box)
    assert (wa.reward, wa.verdict, wa.details["verdicts"]) == (0.0, "wrong_answer", ["WA"])
    lead = verify_code(_fence("print(' 1')\n"), _stdio(("", "1")), sandbox=box)
    assert lead.verdict == "wrong_answer"


def test_fraction_mode_and_stop_on_failure(box: Sandbox) -> None:
    problem = _stdio(("1 2", "3"), ("2 2", "5"), ("3 4", "7"))
    frac = verify_code(_fence(ADD), problem, mode="fraction", sandbox=box)
    assert frac.reward == pytest.approx(2 / 3) and frac.details["verdicts"] == ["AC", "WA", "AC"]
    full = verify_code(_fence(ADD), problem, sandbox=box)
    assert (full.reward, full.verdict, full.details["verdicts"]) == (
        0.0,
        "wrong_answer",
        ["AC", "WA"],
    )
    verifier = make_code_verifier(mode="fraction", sandbox=box)
    assert verifier(_fence(ADD), problem).reward == pytest.approx(2 / 3)


def test_no_code_no_tests_bad_test(box: Sandbox) -> None:
    assert verify_code("just prose", _stdio(("", "1")), sandbox=box).verdict == "no_code"
    assert verify_code(_fence(ADD), Problem("p", "", "code"), sandbox=box).verdict == "no_tests"
    bad = Problem("p", "", "code", tests=({"stdin": "1"},))
    assert verify_code(_fence(ADD), bad, sandbox=box).verdict == "bad_test"


def test_call_cases(box: Sandbox) -> None:
    problem = Problem(
        "p",
        "",
        "code",
        tests=(
            {"call": "solve(1, 2)", "expected": "3"},
            {"call": "solve([1], [2])", "expected": "[1, 2]"},
            {"call": "solve('a', 'b')", "expected": "ab"},
        ),
    )
    source = "def solve(a, b):\n    print('noise')\n    return a + b\n"
    assert verify_code(_fence(source), problem, sandbox=box).reward == 1.0
    wrong = verify_code(_fence("def solve(a, b):\n    return a * b\n"), problem, sandbox=box)
    assert (wrong.reward, wrong.details["verdicts"]) == (0.0, ["WA"])
    crash = verify_code(_fence("def solve(a, b):\n    return 1 / 0\n"), problem, sandbox=box)
    assert crash.verdict == "runtime_error"


def test_results_match_rules() -> None:
    assert results_match("(1, 2)", "[1, 2]")
    assert results_match("0.30000000000000004", "0.3")
    assert not results_match("1", "True")  # bool is not int
    assert results_match("'abc'", "abc")  # a non-literal expected is compared as text
    assert not results_match("{'a': 1}", "{'a': 2}")


def test_object_with_fake_eq_cannot_pass(box: Sandbox) -> None:
    problem = Problem("p", "", "code", tests=({"call": "solve()", "expected": "3"},))
    fakes = [
        (
            "class E:\n    def __eq__(self, o): return True\n    def __repr__(self): return '3'\n"
            "def solve(): return E()\n"
        ),
        "class E(int):\n    def __eq__(self, o): return True\ndef solve(): return E(0)\n",
        "class E(str):\n    def __eq__(self, o): return True\ndef solve(): return E('x')\n",
    ]
    for source in fakes:
        score = verify_code(_fence(source), problem, sandbox=box)
        assert (score.reward, score.verdict) == (0.0, "wrong_answer"), source


def test_early_exit_cannot_fake_success(box: Sandbox) -> None:
    for source in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n"):
        stdio = verify_code(_fence(source + ADD), _stdio(("1 2", "3")), sandbox=box)
        assert (stdio.reward, stdio.verdict) == (0.0, "wrong_answer")
        call = Problem("p", "", "code", tests=({"call": "solve(1, 2)", "expected": "3"},))
        early = verify_code(_fence(source + "def solve(a, b): return a + b\n"), call, sandbox=box)
        assert (early.reward, early.verdict) == (0.0, "wrong_answer")


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_cpp_accepted_and_compile_error(box: Sandbox) -> None:
    source = (
        '#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;std::cout<<a+b<<"\\n";}\n'
    )
    problem = _stdio(("1 2", "3"), ("40 2", "42"))
    score = verify_code(_fence(source, "cpp"), problem, sandbox=box)
    assert (score.reward, score.details["language"]) == (1.0, "cpp")
    broken = verify_code(_fence("int main( {", "c++"), problem, sandbox=box)
    assert broken.verdict == "compile_error" and "error" in broken.details["stderr"]


def test_limits_from_problem() -> None:
    limits = limits_for(_stdio(("", ""), time_limit_s=3, memory_limit_mb=128), Limits())
    assert (limits.cpu_s, limits.wall_s, limits.memory_mb) == (3.0, 7.0, 128)


# ---------------------------------------------------------------- attacks


def test_network_is_unreachable(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    source = (
        "import socket\n"
        f"for addr in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
        "    try:\n"
        "        s = socket.create_connection(addr, timeout=0.5)\n"
        "        print(s.recv(100).decode())\n"
        "    except OSError as e:\n"
        "        print('blocked', e, file=__import__('sys').stderr)\n"
    )
    score = _attack(box, source, token)
    with pytest.raises(socket.timeout):
        server.accept()  # nobody connected to the host's loopback
    server.close()
    assert score.reward == 0.0
    assert (
        "Connection refused" in score.details["first_failure"]["stderr"]
        or "unreachable" in score.details["first_failure"]["stderr"]
    )


def test_host_files_cannot_be_written_or_deleted(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    canaries = [REPO / f".canary-{token}", Path(f"/tmp/openk1-canary-{token}")]
    created = [REPO / f"pwned-{token}", Path(f"/tmp/pwned-{token}"), Path(f"/root/pwned-{token}")]
    for path in canaries:
        path.write_text(token)
    source = (
        "import os\n"
        + "".join(
            f"try:\n    os.remove({str(p)!r})\nexcept OSError as e:\n    print(e, file=__import__('sys').stderr)\n"
            for p in canaries
        )
        + "".join(
            f"try:\n    open({str(p)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
            for p in created
        )
    )
    try:
        score = _attack(box, source, token)
        assert score.reward == 0.0
        assert all(p.read_text() == token for p in canaries)
        assert not any(p.exists() for p in created)
    finally:
        for path in canaries + created:
            path.unlink(missing_ok=True)


def test_host_files_cannot_be_read(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    canaries = [
        Path(f"/tmp/openk1-secret-{token}"),
        Path(f"/root/openk1-secret-{token}"),
        REPO / f".secret-{token}",
    ]
    for path in canaries:
        path.write_text(token)
    reads = "".join(
        f"try:\n    print(open({str(p)!r}).read())\nexcept OSError as e:\n    print(e, file=sys.stderr)\n"
        for p in canaries
    )
    try:
        source = "import os, sys\n" + reads + "print(sorted(os.listdir('/')), file=sys.stderr)\n"
        score = _attack(box, source, token)
        assert score.reward == 0.0
        assert "No such file or directory" in score.details["first_failure"]["stderr"]
        visible = score.details["first_failure"]["stderr"]
        assert "'root'" not in visible and "'work'" not in visible and "'home'" not in visible
    finally:
        for path in canaries:
            path.unlink(missing_ok=True)


def test_scorer_environment_is_invisible(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_hex(8)
    monkeypatch.setenv("OPENK1_TEST_SECRET", token)
    source = (
        "import os\n"
        "found = {os.environ.get('OPENK1_TEST_SECRET')} - {None}\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        env = open(f'/proc/{pid}/environ', 'rb').read().decode()\n"
        "    except OSError:\n"
        "        continue\n"
        "    for item in env.split('\\0'):\n"
        "        if item.startswith('OPENK1_TEST_SECRET='):\n"
        "            found.add(item.split('=', 1)[1])\n"
        "print(*found)\n"
    )
    assert _attack(box, source, token).reward == 0.0


def test_host_processes_are_invisible_and_unkillable(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token])
    source = (
        "import os, signal, sys\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print(pids, file=sys.stderr)\n"
        "for pid in pids:\n"
        "    try:\n"
        "        if b'" + token + "' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
        "            print('" + token + "')\n"
        "    except OSError:\n"
        "        pass\n"
        "os.kill(os.getppid(), signal.SIGKILL)\n"
        "os.kill(-1, signal.SIGKILL)\n"
    )
    try:
        score = _attack(box, source, token)
        assert score.reward == 0.0
        assert score.verdict == "runtime_error"  # kill(-1) killed the program itself
        assert "[1, 2]" in score.details["first_failure"]["stderr"]  # bwrap's init + itself
        assert sentinel.poll() is None, "a host process was killed"
    finally:
        sentinel.kill()
        sentinel.wait()


def test_kill_minus_one_from_shell_is_contained(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    score = _attack(box, "import os\nos.system('kill -9 -1')\nos.system('kill -9 $PPID')\n", token)
    assert score.reward == 0.0 and os.getpid() > 0
    assert signal.getsignal(signal.SIGINT) is not None  # this process is untouched and running


def test_fork_bomb_is_contained(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    score = _attack(box, "import os\nwhile True:\n    os.fork()\n", token)
    assert score.reward == 0.0 and score.verdict in ("runtime_error", "time_limit_exceeded")
    assert max(score.details["wall_s"]) < FAST.wall_s + 1.0


def test_memory_bomb_is_contained(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    score = _attack(box, "x = []\nwhile True:\n    x.append(bytearray(1 << 24))\n", token)
    assert (score.reward, score.verdict) == (0.0, "memory_limit_exceeded")


def test_infinite_loop_and_sleep_are_tle(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    for source in ("while True:\n    pass\n", "import time\ntime.sleep(100)\n"):
        score = _attack(box, source, token)
        assert (score.reward, score.verdict) == (0.0, "time_limit_exceeded")
        assert max(score.details["wall_s"]) < FAST.wall_s + 1.0


def test_huge_output_is_ole(box: Sandbox) -> None:
    token = secrets.token_hex(8)
    score = _attack(box, "while True:\n    print('y' * 4096)\n", token)
    assert (score.reward, score.verdict) == (0.0, "output_limit_exceeded")
