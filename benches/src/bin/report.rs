//! Renders the load comparison's results: `report RUNS.csv OUT_DIR` reads the CSV that
//! `load/run.sh` wrote (and the wrk outputs it names), prints the markdown report to stdout, and
//! writes it to `OUT_DIR/results.md` with the chart `OUT_DIR/chart.svg`. A `note.md` next to the
//! CSV (how the run was made, written by `run.sh`) is put under the title, so the report can be
//! re-rendered from the committed data alone.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use upkeep_benches::report::{self, chart};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (csv, out) = match args.as_slice() {
        [csv, out, ..] => (PathBuf::from(csv), PathBuf::from(out)),
        _ => {
            eprintln!("usage: report RUNS.csv OUT_DIR");
            return ExitCode::from(2);
        }
    };
    let note_file = csv.parent().unwrap_or(Path::new(".")).join("note.md");
    let note = std::fs::read_to_string(note_file).unwrap_or_default();
    match run(&csv, &out, &note) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(csv: &Path, out: &Path, note: &str) -> Result<String, String> {
    let runs = report::load(csv)?;
    if runs.is_empty() {
        return Err(format!("{}: no runs", csv.display()));
    }
    let summary = report::summarize(&runs);
    let rounds = runs.iter().map(|r| r.row.round).max().unwrap_or(0) + 1;
    let mut text = String::from("# Load comparison: upkeep, nginx, HAProxy\n\n");
    if !note.is_empty() {
        text.push_str(note.trim_end());
        text.push_str("\n\n");
    }
    text.push_str(&format!(
        "Medians over {rounds} interleaved round(s). In parentheses: the median of the per-round \
         ratios to `{}` (nginx, `keepalive 16`) in the same scenario.\n\n",
        report::REFERENCE
    ));
    text.push_str(&report::markdown(&summary));
    let splice = report::splice_markdown(&runs);
    if !splice.is_empty() {
        text.push_str(
            "\n## Splice comparison (issue 14)\n\nMedians of the per-round ratios of a proxy \
             splicing bodies (upkeep's default `splice_min`; `haproxy-splice`, the option named \
             in the note above) to the same proxy copying them (`upkeep-copy`: `splice_min = 0`; \
             `haproxy-safe`), same case and round: req/s above 1 is faster, CPU below 1 is \
             cheaper per request.\n\n",
        );
        text.push_str(&splice);
    }
    let checks = report::checks(&runs);
    if !checks.is_empty() {
        text.push_str("\n## Targets (issue 6)\n\n");
        text.push_str(&report::checks_markdown(&checks));
    }
    text.push_str("\n![requests/s and CPU per request](chart.svg)\n");
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let md = out.join("results.md");
    std::fs::write(&md, &text).map_err(|e| format!("{}: {e}", md.display()))?;
    let svg = chart::svg(
        &summary,
        &format!("upkeep load comparison, {rounds} round(s), loopback, one worker per proxy"),
    )?;
    let path = out.join("chart.svg");
    std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}
