//! Parsing what a test image prints, and judging it together with how QEMU ended.

use crate::qemu::Outcome;

/// One `test NAME ... ok|FAILED` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseLine {
    /// The case's name.
    pub name: String,
    /// `ok`.
    pub passed: bool,
}

/// Everything the runner reads from a test image's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    /// From `running N tests`.
    pub declared: Option<usize>,
    /// The per-case lines, in order.
    pub cases: Vec<CaseLine>,
    /// From the final `N passed, M failed` line.
    pub summary: Option<(usize, usize)>,
}

/// Parses `N passed, M failed` (the whole line).
pub fn parse_summary(line: &str) -> Option<(usize, usize)> {
    let (passed, rest) = line.split_once(" passed, ")?;
    let failed = rest.strip_suffix(" failed")?;
    Some((passed.parse().ok()?, failed.parse().ok()?))
}

/// Reads the harness lines out of the serial output (other lines are ignored).
pub fn parse(output: &str) -> TestReport {
    let mut report = TestReport::default();
    for line in output.lines() {
        let line = line.trim_end();
        if let Some(n) = line.strip_prefix("running ").and_then(|r| r.strip_suffix(" tests")) {
            report.declared = n.parse().ok();
        } else if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, verdict)) = rest.split_once(" ... ") {
                let passed = verdict == "ok";
                if passed || verdict.starts_with("FAILED") {
                    report.cases.push(CaseLine { name: name.to_string(), passed });
                }
            }
        } else if let Some(summary) = parse_summary(line) {
            report.summary = Some(summary);
        }
    }
    report
}

/// The runner's verdict on one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Cases counted as passed.
    pub passed: usize,
    /// Cases (or, for an image that died without naming a case, the image) counted as failed.
    pub failed: usize,
    /// Why the image is not clean, one message each; empty for a clean pass.
    pub problems: Vec<String>,
}

impl TestReport {
    /// Judges an image that is expected to pass: every declared case must print `ok`, the summary
    /// must agree with the lines, and QEMU must have ended with the success code.
    pub fn verdict(&self, outcome: Outcome) -> Verdict {
        let passed = self.cases.iter().filter(|c| c.passed).count();
        let mut failed = self.cases.len() - passed;
        let mut problems: Vec<String> =
            self.cases.iter().filter(|c| !c.passed).map(|c| format!("case {} failed", c.name)).collect();
        if let Some(declared) = self.declared
            && declared > self.cases.len()
        {
            failed += declared - self.cases.len();
            problems.push(format!("{} of {declared} cases printed no result", declared - self.cases.len()));
        }
        match self.summary {
            Some(summary) if summary != (passed, self.cases.len() - passed) => {
                problems.push(format!("summary says {} passed, {} failed, the lines say {passed}/{}", summary.0, summary.1, self.cases.len() - passed));
            }
            None => problems.push("no summary line".into()),
            _ => {}
        }
        if self.declared.is_none() {
            problems.push("no `running N tests` line".into());
        }
        if outcome != Outcome::Success {
            problems.push(format!("image ended with {}", outcome.describe()));
        }
        if !problems.is_empty() && failed == 0 {
            // Something went wrong that no case line accounts for: count the image itself.
            failed = 1;
        }
        Verdict { passed, failed, problems }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "[INFO ] boot\nrunning 2 tests\ntest a ... ok\ntest b ... ok\n2 passed, 0 failed\n";

    #[test]
    fn clean_run_passes() {
        let r = parse(CLEAN);
        assert_eq!(r.declared, Some(2));
        assert_eq!(r.cases.len(), 2);
        assert_eq!(r.summary, Some((2, 0)));
        let v = r.verdict(Outcome::Success);
        assert_eq!((v.passed, v.failed), (2, 0));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }

    #[test]
    fn clean_lines_but_failure_exit_is_a_failure() {
        let v = parse(CLEAN).verdict(Outcome::Failure);
        assert_eq!(v.failed, 1);
        assert!(!v.problems.is_empty());
    }

    #[test]
    fn failed_case_counts() {
        let out = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n    boom\n1 passed, 1 failed\n";
        let v = parse(out).verdict(Outcome::Failure);
        assert_eq!((v.passed, v.failed), (1, 1));
    }

    #[test]
    fn panic_marks_the_rest_not_run() {
        let out = "running 3 tests\ntest a ... ok\ntest b ... FAILED\n    panicked at x.rs:1:1: no\ntest c ... FAILED (not run: the image stopped at b)\n1 passed, 2 failed\n";
        let v = parse(out).verdict(Outcome::Failure);
        assert_eq!((v.passed, v.failed), (1, 2));
    }

    #[test]
    fn hang_without_summary_is_a_failure_with_missing_cases() {
        let out = "running 3 tests\ntest a ... ok\n";
        let v = parse(out).verdict(Outcome::Timeout);
        assert_eq!((v.passed, v.failed), (1, 2));
        assert!(v.problems.iter().any(|p| p.contains("timeout")));
    }

    #[test]
    fn triple_fault_before_any_output_counts_the_image() {
        let v = parse("").verdict(Outcome::Crash(Some(0)));
        assert_eq!((v.passed, v.failed), (0, 1));
    }

    #[test]
    fn lying_summary_is_caught() {
        let out = "running 1 tests\ntest a ... FAILED\n1 passed, 0 failed\n";
        let v = parse(out).verdict(Outcome::Success);
        assert_eq!(v.failed, 1);
        assert!(v.problems.iter().any(|p| p.contains("summary")));
    }

    #[test]
    fn summary_parser_is_strict() {
        assert_eq!(parse_summary("3 passed, 1 failed"), Some((3, 1)));
        assert_eq!(parse_summary("x passed, 1 failed"), None);
        assert_eq!(parse_summary("3 passed, 1 failed!"), None);
    }
}
