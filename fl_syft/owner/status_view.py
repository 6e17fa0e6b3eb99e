"""``fl-syft status``: what a data owner's sites approved, ran and spent, from the sites' own files.

Read-only, without the state directory's lock (a running site holds it) and without asking the
site anything, so it reads the same whether the site runs or not. Only the files fl-syft
appends to or writes whole are read: ``spec.json`` (the policy; its passwords never leave it),
``data.json`` (how many rows), ``audit.jsonl`` (every decision, every call and its outcome since
the site's last fresh start), the rows' ledger in ``<state root>/ledgers/`` (their budget, for
good) and ``secagg.jsonl`` (the secure-aggregation steps taken). Never PySyft's database: it
holds the rows. A line still being written is left for the next read.

A call reads the same in ``site.log`` as the site serves it (:func:`log_call`), in the terminal
of ``fl-syft serve``/``launch`` (:func:`follow`) and here (:func:`call_line`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from fl_syft.common.errors import ConfigError, counted
from fl_syft.owner.ledger import LEDGERS, SITE_LINK, summarize
from fl_syft.owner.policy import OwnerPolicy

log = logging.getLogger("fl_syft.calls")

SECAGG_STEPS = ("keys", "mask", "confirm", "unmask")  # in the order a round takes them (owner.secagg.RECORDED)


# --- one line per event -----------------------------------------------------------------------------

def call_line(entry: dict) -> str:
    """A call's outcome entry (``Guard.record``) as one line: who, what, the epsilon it cost, what is left."""
    site, function, who = entry.get("site", "?"), entry.get("function", "?"), entry.get("requester") or "?"
    outcome, reason = entry.get("outcome"), _one_line(entry.get("reason", ""))
    line = {"served": f"{site}: served {function} to {who}",
            "refused": f"{site}: refused {function} from {who}: {reason}"}.get(
        outcome, f"{site}: {function} from {who} {outcome} ({reason or 'no reason recorded'})")
    if entry.get("epsilon_total") is None:
        return line
    charged, spent, total = entry.get("epsilon_charged") or 0.0, entry["epsilon_spent"], entry["epsilon_total"]
    cost = f"epsilon {charged:.3g} charged" if charged else "nothing charged"
    return f"{line}; {cost}, {spent:.4g} of {total:.4g} spent, {max(0.0, total - spent):.4g} left"


def decision_line(entry: dict) -> str:
    """An approver's decision as one line (a denial with its reason)."""
    return f"{entry.get('site', '?')}: {_decision(entry)}"


def _decision(entry: dict) -> str:
    line = f"{entry.get('decision')} {entry.get('function')} from {entry.get('requester')}"
    return line if entry.get("decision") == "approved" else f"{line}: {_one_line(entry.get('reason', ''))}"


def log_call(entry: dict) -> None:
    """``AuditLog``'s ``on_write`` in a datasite: one line in ``site.log`` per call it ends."""
    if entry.get("event") == "call":
        log.info("%s", call_line(entry))


def follow(site_dirs: list[Path], emit: Callable[[str], None] = log.info, poll_seconds: float = 0.5) -> None:
    """Show the owner who runs ``serve``/``launch``, as they happen, each decision and call their
    sites write to their audit logs from now on (a daemon thread; the sites' logs are files)."""
    offsets = {Path(d): _size(Path(d) / "audit.jsonl") for d in site_dirs}

    def watch() -> None:
        while True:
            for site_dir, offset in offsets.items():
                offsets[site_dir], entries = _appended(site_dir / "audit.jsonl", offset)
                for entry in entries:
                    line = _event_line(entry)
                    if line:
                        emit(line)
            time.sleep(poll_seconds)

    threading.Thread(target=watch, name="owner-view", daemon=True).start()


def _event_line(entry: dict) -> str | None:
    return {"call": call_line, "decision": decision_line}.get(entry.get("event"), lambda e: None)(entry)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- reading a state directory -------------------------------------------------------------------

def read_state(state_dir: Path) -> dict:
    """Every site under ``state_dir`` (a ``launch``'s site-1..N, a ``serve``'s one, or one site's
    own directory) and the ledgers in its store that no site holds now (other rows served before,
    budgets reset). Raises ConfigError if there is no site there."""
    state = Path(state_dir)
    if (state / "spec.json").is_file():
        dirs = [state]
    else:
        dirs = sorted((d for d in state.iterdir() if (d / "spec.json").is_file()), key=_natural) \
            if state.is_dir() else []
    if not dirs:
        raise ConfigError(f"{{state_dir}} {state}: no fl-syft site here: give the --state-dir that fl-syft serve or "
                          "launch used (default .fl-syft)")
    sites = [read_site(d) for d in dirs]
    store, held = state / LEDGERS, {s["budget"]["ledger"] for s in sites if s["budget"]}
    others = [{"ledger": str(path), **brief} for path in sorted(store.glob("*.jsonl"))  # (none for one site's dir)
              if str(path.resolve()) not in held and (brief := _ledger(path))]
    return {"state_dir": str(state.resolve()), "sites": sites, "other_ledgers": others}


def read_site(site_dir: Path) -> dict:
    """One site's view (JSON-ready); see the module's docstring for what is read."""
    site_dir = Path(site_dir)
    spec, data = _json(site_dir / "spec.json"), _json(site_dir / "data.json")
    audit, unreadable = _jsonl(site_dir / "audit.jsonl")
    rows = data.get("rows")
    policy = OwnerPolicy.from_dict(spec["policy"]) if "policy" in spec else None
    privacy = policy and (replace(policy.privacy, delta=policy.delta_for(rows)) if rows else policy.privacy)
    ledger = _ledger_path(site_dir, data.get("sha256"))
    budget = ledger and _ledger(ledger)
    return {
        "name": spec.get("name", site_dir.name), "dir": str(site_dir.resolve()), "running": _running(site_dir),
        "url": f"{'https' if spec.get('tls_cert') else 'http'}://{spec.get('host')}:{spec.get('port')}",
        "rows": rows, "policy": privacy and privacy.to_dict(), "policy_line": privacy and privacy.describe(),
        "budget": budget and {"ledger": str(ledger.resolve()), **budget},
        "requests": [{k: e.get(k) for k in ("time", "requester", "function", "decision", "reason", "fingerprint")}
                     for e in audit if e.get("event") == "decision"],
        "calls": _calls(audit),
        "budget_resets": [{"time": e.get("time"), "message": e.get("message")}
                          for e in audit if e.get("event") == "privacy budget reset"],
        "secure_aggregation": _secagg(site_dir / "secagg.jsonl"),
        "unreadable_audit_lines": unreadable,
    }


def _calls(audit: list[dict]) -> list[dict]:
    """One entry per call: its outcome entry; a charge with none (the site stopped during the call,
    or it is still running) as "charged"; a budget refusal as logs before outcome entries wrote it."""
    ended = {e.get("call") for e in audit if e.get("event") == "call"}
    calls = []
    for e in audit:
        event = e.get("event")
        if event == "charged" and e.get("function") != "row count" and e.get("call") not in ended:
            e = {**e, "outcome": "charged"}
        elif event == "refused":
            e = {**e, "outcome": "refused", "epsilon_charged": 0.0}
        elif event != "call":
            continue
        total, spent = e.get("epsilon_total"), e.get("epsilon_spent")
        calls.append({"time": e.get("time"), "requester": e.get("requester"), "function": e.get("function"),
                      "outcome": e["outcome"], "reason": e.get("reason"), "epsilon_charged": e.get("epsilon_charged"),
                      "epsilon_spent": spent, "epsilon_total": total,
                      "epsilon_left": None if total is None or spent is None else max(0.0, total - spent)})
    return calls


def _ledger_path(site_dir: Path, data_sha256: str | None) -> Path | None:
    """The ledger of the rows the site holds: its link, else the store's file for its rows."""
    link = site_dir / SITE_LINK
    if link.exists():
        return link
    path = site_dir.parent / LEDGERS / f"{data_sha256}.jsonl"
    return path if data_sha256 and path.exists() else None


def _ledger(path: Path) -> dict | None:
    lines, _ = _jsonl(path)
    if not lines or lines[0].get("kind") != "header":
        return None
    s = summarize(lines)
    count = next((e.get("value") for e in lines if e.get("kind") == "row count"), None)
    return {"data_sha256": s.data_sha256, "epsilon_spent": s.epsilon_spent, "epsilon_total": s.epsilon_total,
            "epsilon_left": max(0.0, s.epsilon_total - s.epsilon_spent), "delta": s.delta,
            "charged_calls": sum(e.get("kind") == "call" for e in lines), "published_rows": count,
            "created": lines[0].get("created")}


def _secagg(path: Path) -> dict | None:
    """The secure-aggregation rounds this site took part in: the once-only steps it took in each."""
    if not path.exists():
        return None
    rounds: dict[tuple[str, int], set[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            session, rnd, step = json.loads(line)
            rounds.setdefault((str(session), int(rnd)), set()).add(str(step))
        except (ValueError, TypeError):  # a torn or foreign line: the site skips it too
            continue
    listed = [{"session": s, "round": r, "steps": [k for k in SECAGG_STEPS if k in steps]}
              for (s, r), steps in rounds.items()]
    masked, unmasked = (sum(step in r["steps"] for r in listed) for step in ("mask", "unmask"))
    return {"sessions": len({s for s, _ in rounds}), "rounds": listed, "masked": masked, "unmasked": unmasked}


def _running(site_dir: Path) -> str | None:
    """Who serves the site now (its lock file's note), None if no live process: read, never locked."""
    try:
        note = (site_dir / ".lock").read_text(errors="replace").strip()
    except OSError:
        return None
    match = re.search(r"PID (\d+)", note)
    if not match:
        return None
    pid = int(match[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.exists():  # Linux: a reused PID is not the site
        try:
            if b"fl_syft.owner.datasite" not in cmdline.read_bytes():
                return None
        except OSError:
            return None
    return note


def _json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _jsonl(path: Path) -> tuple[list[dict], int]:
    """The complete lines of ``path`` parsed, and how many could not be (a last line being written is neither)."""
    return _parse(path.read_bytes()) if path.exists() else ([], 0)


def _parse(raw: bytes) -> tuple[list[dict], int]:
    entries, bad = [], 0
    for line in raw[:raw.rfind(b"\n") + 1].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(entry, dict):
            entries.append(entry)
        else:
            bad += 1
    return entries, bad


def _appended(path: Path, offset: int) -> tuple[int, list[dict]]:
    """(new offset, entries) of the complete lines written to ``path`` after ``offset``."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:  # a new file: from its start
                offset = 0
            f.seek(offset)
            raw = f.read()
    except OSError:
        return 0, []
    complete = raw[:raw.rfind(b"\n") + 1]
    return offset + len(complete), _parse(complete)[0]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _natural(path: Path) -> list:
    """site-2 before site-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


# --- for a person --------------------------------------------------------------------------------

def render(view: dict, last: int | None = 10) -> str:
    """``read_state``'s view as a short summary per site: the policy, the budget, the requests and
    the ``last`` calls (None: every one), secure aggregation."""
    sites = view["sites"]
    out = [f"{view['state_dir']}: {counted(len(sites), 'site')} (read from their files)"]
    for site in sites:
        out += ["", *_render_site(site, last)]
    others = view["other_ledgers"]
    if others and last is None:
        out += ["", "ledgers of rows no site holds now (older rows, or budgets reset):"]
        out += [f"  {Path(o['ledger']).name}: epsilon {o['epsilon_spent']:.4g} of {o['epsilon_total']:.4g} spent"
                for o in others]
    elif others:
        out += ["", f"{counted(len(others), 'more ledger')} of rows no site holds now (--all lists them)"]
    return "\n".join(out)


def _render_site(site: dict, last: int | None) -> list[str]:
    running = f"running ({site['running']})" if site["running"] else "not running"
    rows = f", {site['rows']} rows" if site["rows"] is not None else ""
    out = [f"{site['name']}: {running}, {site['url']}{rows}", f"  policy    {site['policy_line'] or 'unknown'}"]
    out += [f"  {'budget' if i == 0 else '':<8}  {line}" for i, line in enumerate(_budget_lines(site))]
    requests = site["requests"]
    approved = sorted({r["function"] for r in requests if r["decision"] == "approved"})
    denied = sum(r["decision"] != "approved" for r in requests)
    out.append(f"  requests  {len(requests) - denied} approved" + (f" ({', '.join(approved)})" if approved else "")
               + f", {denied} denied" + _shown(len(requests), last))
    out += [f"    {_when(r['time'])}  {_decision(r)}" for r in _tail(requests, last)]
    calls = site["calls"]
    summary = ", ".join(f"{n} {outcome}" for outcome, n in Counter(c["outcome"] for c in calls).items())
    out.append(f"  calls     {len(calls)}" + (f": {summary}" if calls else "") + _shown(len(calls), last))
    out += [f"    {line}" for line in _call_table(_tail(calls, last))]
    secure = site["secure_aggregation"]
    if secure:
        lost = secure["masked"] - secure["unmasked"]
        out.append(f"  secure aggregation  {counted(secure['masked'], 'round')} masked, {secure['unmasked']} unmasked, "
                   f"in {counted(secure['sessions'], 'session')}"
                   + (f" ({lost} masked but not unmasked here: a round that lost sites, or a run that stopped)"
                      if lost > 0 else ""))
    if site["unreadable_audit_lines"]:
        out.append(f"  ({site['unreadable_audit_lines']} unreadable lines in audit.jsonl skipped)")
    return out


def _budget_lines(site: dict) -> list[str]:
    b = site["budget"]
    if b is None:
        return ["nothing charged: no differential privacy" if site["policy"] and site["policy"]["epsilon"] is None
                else "no ledger yet"]
    count = f" and the row count (published with noise: {b['published_rows']})" if b["published_rows"] else ""
    lines = [f"epsilon {b['epsilon_spent']:.4g} of {b['epsilon_total']:.4g} spent, "
             f"{_left(b['epsilon_left'], b['epsilon_total'])} left "
             f"(delta {b['delta']:g}), over {b['charged_calls']} charged calls{count}",
             f"ledger of rows {b['data_sha256'][:12]} (kept over fresh starts): {b['ledger']}"]
    return lines + [f"reset {_when(r['time'])}: {r['message']}" for r in site["budget_resets"]]


def _call_table(calls: list[dict]) -> list[str]:
    if not calls:
        return []
    rows = [("when", "by", "function", "charged", "left", "outcome")]  # epsilon: charged, left after
    for c in calls:
        outcome = c["outcome"] + (f": {_one_line(c['reason'], 200)}" if c.get("reason") else "")
        if c["outcome"] == "charged":
            outcome = "charged, no outcome yet (still running, or the site stopped during it)"
        rows.append((_when(c["time"]), c["requester"] or "?", c["function"] or "?",
                     "-" if c["epsilon_charged"] is None else f"{c['epsilon_charged']:.3g}",
                     "-" if c["epsilon_left"] is None else _left(c["epsilon_left"], c["epsilon_total"]), outcome))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join([*(r[i].ljust(widths[i]) for i in range(5)), r[5]]).rstrip() for r in rows]


def _left(left: float, total: float) -> str:
    """What is left of a budget, 0 for the rounding residue a run that spends all leaves (~1e-8)."""
    return "0" if left <= 1e-6 * total else f"{left:.4g}"


def _tail(items: list, last: int | None) -> list:
    return items if last is None else items[-last:]


def _shown(n: int, last: int | None) -> str:
    return f"; the last {last} (--all: every one)" if last is not None and n > last else ""


def _when(stamp: str | None) -> str:
    """``2026-12-02T01:06:21+0000`` as ``2026-12-02 01:06:21``."""
    return (stamp or "?")[:19].replace("T", " ")
