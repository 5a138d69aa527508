"""--method auto on the real SmolLM2-135M (trained 8192) at 2× (16k) and 4× (32k) on CPU: does the declared rule pick
a method that is also best on text and prompts it never saw? (issue #20; not a test)

Per target N it runs `ropeconvert MODEL --method auto --target-context N --to T --out OUT/auto-N[.gguf]` (timed), reads
the leaderboard (selection.json in the export's report dir), then re-measures EVERY candidate of it — and the base —
in-process on held-out material: perplexity at N on documents that are neither the default search's fitness
document nor a selection document, and passkey accuracy at N with validate's seed (0; selection's keys are seeded
apart). Each candidate's spec is rebuilt exactly as auto built it (auto_plan.Candidate.resolve on the auto work dir,
so searched factors / maps are found there, nothing is searched again); the model loads once and each candidate is a
rope swapped in (or a position map attached), as convert/auto.py's _Scorer does.

Resumable: a finished auto run and each (target, candidate) held-out score are kept in OUT/results.json and skipped
when rerun; an interrupted auto run continues with --resume. Writes OUT/auto.md (printed too); --append-results
appends it to bench/RESULTS.md.

Longer than a session (32k on 2 CPU cores is hours): put OUT in the tracked folder bench/checkpoints/ and commit its
JSON (results.json, auto-N.gguf.auto/: the auto and search checkpoints, no machine paths; the GGUF export itself is
ignored and rebuilt) at the end of each session; the next checkout reruns the same command and continues.

CPU run (hours: one 16k forward of the 135M model is minutes on 2 shared cores, 32k about four times that):

    nohup nice -n 10 python bench/auto_smollm2.py > bench/out/auto-smollm2.log 2>&1 &

Smoke run (tiny model, seconds): python bench/auto_smollm2.py --model TINY_DIR --targets 128 --text TEXT_DIR \
    --heldout-documents 1 --out /tmp/auto-bench
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--targets", default="16384,32768")
    ap.add_argument("--to", default="gguf", choices=("hf", "gguf", "both"))
    ap.add_argument("--candidates", default=None)
    ap.add_argument("--search-budget", type=int, default=None)
    ap.add_argument("--selection-documents", type=int, default=None)
    ap.add_argument("--selection-prompts", type=int, default=None)
    ap.add_argument("--heldout-documents", type=int, default=2)
    ap.add_argument("--heldout-prompts", type=int, default=4)
    ap.add_argument("--text", type=Path, default=None, help="a .txt file or a directory of them (passed through)")
    ap.add_argument("--corpus", default="austen")
    ap.add_argument("--out", type=Path, default=Path("bench/out/auto-smollm2"))
    ap.add_argument("--append-results", action="store_true", help="append OUT/auto.md to bench/RESULTS.md")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1))

    # the options auto is run with; only the ones given, so the CLI and ConvertOptions defaults stay the only ones
    given = {k: getattr(args, k) for k in ("candidates", "search_budget", "selection_documents", "selection_prompts")
             if getattr(args, k) is not None}
    text = str(args.text) if args.text else args.corpus  # what the CLI makes of --text / --corpus
    heldout_settings = {"documents": args.heldout_documents, "prompts": args.heldout_prompts, "seed": 0}
    sections = []
    for target in (int(n) for n in args.targets.split(",")):
        export = out / (f"auto-{target}.gguf" if args.to == "gguf" else f"auto-{target}")
        # the command is recorded (and compared on a rerun) with the export relative to the working directory, so a
        # checkpoint folder committed in one session resumes in another checkout (and holds no machine path)
        cmd = [str(args.model), "--method", "auto", "--target-context", str(target), "--to", args.to, "--out",
               _relative(export), "-q"] + [a for k, v in given.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        cmd += ["--text", text] if args.text else ["--corpus", args.corpus]
        rec = results.get(export.name)  # keyed by the export: --to hf and --to gguf runs may share OUT
        if rec is None or rec.get("command") != cmd:  # other auto options: its old scores say nothing about this run
            rec = results[export.name] = {"command": cmd}
        # an HF export holds its report itself; a GGUF's is beside it (auto-N.report: the name report_dir_for gives
        # a not-yet-written HF dir auto-N too, so it is not asked before the run)
        board_path = (export if args.to != "gguf" else _report_dir(export)) / "selection.json"
        if "auto_seconds" not in rec or not board_path.exists():
            extra = ["--resume"] if (export.with_name(export.name + ".auto") / "auto.json").exists() else []
            extra += ["--force"] if export.exists() else []  # a rerun replaces the export instead of refusing
            print(f"[{time.strftime('%H:%M:%S')}] ropeconvert {' '.join(cmd + extra)}", flush=True)
            t0 = time.perf_counter()
            try:
                subprocess.run([sys.executable, "-m", "ropeconvert", *cmd, *extra], check=True)
            finally:  # an interrupted run's seconds count too: the wall time is summed over the attempts
                rec["auto_spent"] = round(rec.get("auto_spent", 0) + time.perf_counter() - t0, 1)
                rec["auto_attempts"] = rec.get("auto_attempts", 0) + 1
                save()
            rec["auto_seconds"] = rec["auto_spent"]
            rec.pop("heldout", None)  # a new export: measure again
            save()
        board = json.loads(board_path.read_text())
        if "heldout" not in rec or rec.get("heldout_settings") != heldout_settings:
            rec["heldout"], rec["heldout_settings"] = {}, heldout_settings
        heldout(args, given, text, target, export, board, rec, save)
        sections.append(report(board, rec, target))

    title = f"--method auto, {Path(str(args.model)).name}, --to {args.to} (bench/auto_smollm2.py)"
    md = "\n".join([f"## {title}", ""] + sections) + f"\nMeasured {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC " \
         f"({_relative(results_path)}).\n"
    (out / "auto.md").write_text(md)
    print(md)
    if args.append_results:
        results_md = Path(__file__).resolve().parent / "RESULTS.md"
        with results_md.open("a") as f:
            f.write("\n" + md)
        print(f"appended to {results_md}")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:  # outside the working directory: as given
        return str(path)


def _report_dir(export: Path) -> Path:
    from ropeconvert.formats.export import report_dir_for

    return report_dir_for(export)


def heldout(args, given: dict, text: str, target: int, export: Path, board: dict, rec: dict, save) -> None:
    """Held-out perplexity at N and passkey at N for the base and every leaderboard candidate not yet in rec."""
    todo = ["base"] + [c["method"] for c in board["candidates"] if "error" not in c]
    todo = [m for m in todo if m not in rec["heldout"]]
    if not todo:
        return
    from ropeconvert.convert.auto_plan import Candidate
    from ropeconvert.convert.default_search import work_dir
    from ropeconvert.convert.options import ConvertOptions
    from ropeconvert.convert.search.fitness import aggregate, sample_nll, text_sample
    from ropeconvert.convert.search.run import pick_documents
    from ropeconvert.formats.source import hf_checkpoint, resolve
    from ropeconvert.validators import corpus, passkey
    from ropeconvert.validators.dpe_attention import attach, detach
    from ropeconvert.validators.runtime import load, set_rope

    # the same fields the CLI run had: Candidate.resolve reads model, seed, text, search_budget, original_context, …
    o = ConvertOptions(model=str(args.model), method="auto", to=args.to, out=export, knobs={"target_context": target},
                       text=text, progress=False, resume=True, **given)
    source = resolve(o.model, progress=False)
    base = source.base_rope(o.original_context, o.replace_scaling)
    work = work_dir(export, ".auto")
    say = lambda line: print(line, flush=True)  # noqa: E731 — would only speak if a search had to run
    runtime = load(hf_checkpoint(source, False), device=None, original_context=base.original_context)
    try:
        docs = corpus.load(text)
        fit = pick_documents(runtime.tokenizer, docs, 1, target, text)  # the default search's fitness document
        skip = {n for n, _ in fit} | set(board["documents"])
        rest = [d for d in docs if d.name not in skip]
        held = pick_documents(runtime.tokenizer, rest, args.heldout_documents, target, text)
        rec["heldout_documents"] = [n for n, _ in held]
        samples = [text_sample(n, ids, target, runtime.bos_id) for n, ids in held]
        depths = [(i + 0.5) / args.heldout_prompts for i in range(args.heldout_prompts)]  # as auto spreads them
        model = runtime.model
        for method in todo:
            t0 = time.perf_counter()
            spec = None if method == "base" else \
                Candidate(method).resolve(o, source, base, target, work, say, None).spec(method)
            mapped = spec is not None and spec.position_map is not None
            set_rope(model, None if mapped else spec, base)  # a position map keeps the native rope (as _Scorer)
            if mapped:
                attach(model, spec.position_map)
            try:
                ppl = aggregate(sample_nll(model, samples))
                pk = passkey.run(runtime, [target], depths, 1, seed=0, progress=False)
            finally:
                if mapped:
                    detach(model)
            rec["heldout"][method] = {"ppl_target": ppl if ppl < float("inf") else None,
                                      "passkey_target": float(sum(pk.accuracy[0]) / len(depths)),
                                      "seconds": round(time.perf_counter() - t0, 1)}
            save()
            print(f"[{time.strftime('%H:%M:%S')}] {target} {method}: held-out ppl {_f(ppl)}, passkey "
                  f"{_pct(rec['heldout'][method]['passkey_target'])} ({rec['heldout'][method]['seconds']} s)",
                  flush=True)
    finally:
        runtime.close()


def report(board: dict, rec: dict, target: int) -> str:
    """One target: the table, the two goal checks and the wall times, in markdown."""
    held, winner = rec["heldout"], board["winner"]
    s = board["settings"]
    lines = [f"### {target} tokens ({target / s['original_context']:g}× the trained {s['original_context']})", "",
             f"Selection on {', '.join(board['documents'])} + {s['selection_prompts']} passkey prompt(s); held-out "
             f"on {', '.join(rec.get('heldout_documents', []))} + {rec['heldout_settings']['prompts']} passkey "
             f"prompt(s) (seed 0). Winner: **{winner}** — {board['reason']}.", "",
             f"| candidate | selection ppl@{target} | selection passkey | held-out ppl@{target} | held-out passkey "
             "| winner |", "|---|---:|---:|---:|---:|---|"]
    rows = [("base (no extension)", board["base"])] + [(c["method"], c) for c in board["candidates"]]
    for name, sel in rows:
        h = held.get("base" if name.startswith("base") else name, {})
        if "error" in sel:
            lines.append(f"| {name} | — | — | — | — | not measured: {sel['error']} |")
            continue
        lines.append(f"| {name} | {_f(sel.get('ppl_target'))} | {_pct(sel.get('passkey_target'))} | "
                     f"{_f(h.get('ppl_target'))} | {_pct(h.get('passkey_target'))} | "
                     f"{'**winner**' if name == winner else ''} |")
    # the goal checks are over the candidates (the base is a reference, not a choice auto could make)
    cands = {c["method"]: held[c["method"]] for c in board["candidates"] if c["method"] in held}
    finite = {m: r["ppl_target"] for m, r in cands.items() if r["ppl_target"] is not None}
    w = cands.get(winner, {})
    if finite and w.get("ppl_target") is not None:
        best = min(finite, key=finite.get)
        ok = w["ppl_target"] <= finite[best] * 1.01
        lines += ["", f"- winner within 1% of the best candidate's held-out perplexity: {'yes' if ok else 'no'} "
                      f"(winner {winner} {_f(w['ppl_target'])} vs best {best} {_f(finite[best])})"]
    else:
        lines += ["", "- winner within 1% of the best candidate's held-out perplexity: no (no finite perplexity)"]
    if w:
        top = max(r["passkey_target"] for r in cands.values())
        lines.append(f"- winner's held-out passkey ≥ every candidate's: {'yes' if w['passkey_target'] >= top else 'no'} "
                     f"(winner {_pct(w['passkey_target'])}, best {_pct(top)})")
    seconds = sum(r["seconds"] for r in held.values())
    tries = rec.get("auto_attempts", 1)
    lines += [f"- wall time: auto run {rec['auto_seconds']:.0f} s" + (f" (over {tries} runs, resumed)" if tries > 1 else "")
              + f", held-out evaluation {seconds:.0f} s (base + {len(cands)} candidate(s), the model load apart)", ""]
    return "\n".join(lines)


def _f(v) -> str:
    return "—" if v is None or v == float("inf") else f"{v:.4g}"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


if __name__ == "__main__":
    main()
