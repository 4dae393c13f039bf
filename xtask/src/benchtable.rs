//! The table every benchmark reports into (issue 14 item 1): one row per figure, with the
//! reference measured in the same invocation, their ratio, the goal and whether it is met.
//! `cargo xtask bench` prints it at the end and writes it as JSON to `build/bench.json` (a
//! single `bench NAME` writes `build/bench-NAME.json`) so that runs can be compared.
//! Figures only: nothing here fails a test.

use std::sync::Mutex;

/// What a row's goal says about `catenary / reference` (or about the value alone when a row
/// has no reference).
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// The ratio (or value) must be at most this.
    AtMost(f64),
    /// The ratio (or value) must be at least this.
    AtLeast(f64),
    /// A figure to watch, with no goal.
    None,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub catenary: f64,
    /// What the reference is ("direct QEMU", "null syscall", …) and its value.
    pub reference: Option<(String, f64)>,
    pub goal: Goal,
}

impl Row {
    pub fn ratio(&self) -> Option<f64> {
        self.reference.as_ref().filter(|(_, r)| *r > 0.0).map(|(_, r)| self.catenary / r)
    }
    /// `Some(true|false)` when the row has a goal and a figure to compare.
    pub fn met(&self) -> Option<bool> {
        let v = self.ratio().unwrap_or(self.catenary);
        if !v.is_finite() {
            return Some(false);
        }
        match self.goal {
            Goal::AtMost(g) => Some(v <= g),
            Goal::AtLeast(g) => Some(v >= g),
            Goal::None => None,
        }
    }
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

/// A figure with a reference measured in the same run.
pub fn ratio(metric: &str, unit: &'static str, catenary: f64, reference: &str, value: f64, goal: Goal) {
    ROWS.lock().unwrap().push(Row { metric: metric.into(), unit, catenary, reference: Some((reference.into(), value)), goal });
}

/// A figure on its own (the goal, if any, applies to the value).
pub fn value(metric: &str, unit: &'static str, catenary: f64, goal: Goal) {
    ROWS.lock().unwrap().push(Row { metric: metric.into(), unit, catenary, reference: None, goal });
}

pub fn rows() -> Vec<Row> {
    ROWS.lock().unwrap().clone()
}

fn goal_text(g: Goal, ratio: bool) -> String {
    let what = if ratio { "x" } else { "" };
    match g {
        Goal::AtMost(v) => format!("<= {v}{what}"),
        Goal::AtLeast(v) => format!(">= {v}{what}"),
        Goal::None => "-".into(),
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table as text: metric, Catenary, reference, ratio, goal, met / not met.
pub fn render(rows: &[Row]) -> String {
    let mut lines = vec![["metric".to_string(), "catenary".into(), "reference".into(), "ratio".into(), "goal".into(), "result".into()]];
    for r in rows {
        let reference = r.reference.as_ref().map(|(n, v)| format!("{} {} ({n})", num(*v), r.unit)).unwrap_or_else(|| "-".into());
        let result = match r.met() {
            Some(true) => "met",
            Some(false) => "not met",
            None => "-",
        };
        lines.push([
            r.metric.clone(),
            format!("{} {}", num(r.catenary), r.unit),
            reference,
            r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
            goal_text(r.goal, r.reference.is_some()),
            result.into(),
        ]);
    }
    let mut width = [0usize; 6];
    for l in &lines {
        for (w, c) in width.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l.iter().zip(width).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(width.iter().sum::<usize>() + 10));
            out.push('\n');
        }
    }
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: f64) -> String {
    if v.is_finite() { format!("{v}") } else { "null".into() }
}

/// The rows as JSON (one object: when, commit, host load, rows).
pub fn to_json(rows: &[Row], commit: &str, load: &str, unix_time: u64) -> String {
    let mut items = Vec::new();
    for r in rows {
        let (goal_kind, goal_value) = match r.goal {
            Goal::AtMost(v) => ("at_most", json_num(v)),
            Goal::AtLeast(v) => ("at_least", json_num(v)),
            Goal::None => ("none", "null".into()),
        };
        let (rn, rv) = r.reference.as_ref().map(|(n, v)| (json_str(n), json_num(*v))).unwrap_or(("null".into(), "null".into()));
        let met = r.met().map(|m| m.to_string()).unwrap_or_else(|| "null".into());
        items.push(format!(
            "    {{\"metric\": {}, \"unit\": {}, \"catenary\": {}, \"reference\": {rn}, \"reference_value\": {rv}, \"ratio\": {}, \"goal\": {{\"kind\": \"{goal_kind}\", \"value\": {goal_value}}}, \"met\": {met}}}",
            json_str(&r.metric),
            json_str(r.unit),
            json_num(r.catenary),
            r.ratio().map(json_num).unwrap_or_else(|| "null".into()),
        ));
    }
    format!(
        "{{\n  \"unix_time\": {unix_time},\n  \"commit\": {},\n  \"host_load\": {},\n  \"rows\": [\n{}\n  ]\n}}\n",
        json_str(commit),
        json_str(load),
        items.join(",\n")
    )
}

/// Print the table and write it to `build/<file>`.
pub fn finish(file: &str) -> Result<(), String> {
    let rows = rows();
    println!();
    println!("== bench: every figure, its reference from the same run, and its goal");
    print!("{}", render(&rows));
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(crate::tools::root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let path = crate::tools::out_dir().join(file);
    std::fs::write(&path, to_json(&rows, &commit, &load, now)).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("(written to {})", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_goal_and_result() {
        let r = Row { metric: "boot".into(), unit: "ms", catenary: 230.0, reference: Some(("direct".into(), 200.0)), goal: Goal::AtMost(1.15) };
        assert_eq!(r.ratio(), Some(1.15));
        assert_eq!(r.met(), Some(true));
        let r = Row { catenary: 231.0, ..r };
        assert_eq!(r.met(), Some(false));
        let t = Row { metric: "tput".into(), unit: "Mbit/s", catenary: 30.0, reference: Some(("plain".into(), 60.0)), goal: Goal::AtLeast(0.8) };
        assert_eq!(t.met(), Some(false));
        let m = Row { metric: "mem".into(), unit: "KiB", catenary: 300.0, reference: None, goal: Goal::AtMost(256.0) };
        assert_eq!(m.met(), Some(false));
        let w = Row { metric: "x".into(), unit: "ms", catenary: 1.0, reference: None, goal: Goal::None };
        assert_eq!(w.met(), None);
        let nan = Row { metric: "x".into(), unit: "ms", catenary: f64::NAN, reference: Some(("r".into(), 1.0)), goal: Goal::AtMost(2.0) };
        assert_eq!(nan.met(), Some(false));
        let text = render(&[r, t, m, w]);
        assert!(text.lines().nth(2).unwrap().ends_with("not met"), "{text}");
        assert!(text.contains("1.15x") || text.contains("1.16x"), "{text}");
    }

    #[test]
    fn json_is_well_formed() {
        let rows = vec![
            Row { metric: "a \"q\"".into(), unit: "ms", catenary: 1.5, reference: Some(("d".into(), 1.0)), goal: Goal::AtMost(1.15) },
            Row { metric: "b".into(), unit: "KiB", catenary: f64::NAN, reference: None, goal: Goal::None },
        ];
        let j = to_json(&rows, "abc", "0.1 0.2 0.3", 7);
        assert!(j.contains("\"metric\": \"a \\\"q\\\"\""), "{j}");
        assert!(j.contains("\"ratio\": 1.5"), "{j}");
        assert!(j.contains("\"met\": false"), "{j}");
        assert!(j.contains("\"catenary\": null"), "{j}");
        let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
        assert_eq!(v["rows"][0]["metric"], "a \"q\"");
        assert_eq!(v["rows"][0]["goal"]["value"], 1.15);
        assert!(v["rows"][1]["catenary"].is_null());
        assert_eq!(v["commit"], "abc");
    }
}
