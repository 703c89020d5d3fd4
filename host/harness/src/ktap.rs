//! Parsing KTAP / TAP output of kselftest-style runs.

/// One test result.
#[derive(Debug, PartialEq, Eq)]
pub struct Result {
    pub name: String,
    pub ok: bool,
    pub skip: bool,
}

/// Results of a `run_kselftest.sh` run: the subtests of each test program (nested, indented
/// with `# `), and for a program that reported none, the program's own result.
pub fn parse(out: &str) -> Vec<Result> {
    let mut results = Vec::new();
    let mut program_subtests = 0;
    for line in out.lines() {
        let nested = line.strip_prefix("# ");
        let (text, is_nested) = match nested {
            Some(t) => (t, true),
            None => (line, false),
        };
        let Some(r) = parse_result(text) else {
            continue;
        };
        if is_nested {
            program_subtests += 1;
            results.push(r);
        } else {
            if program_subtests == 0 || !r.ok {
                results.push(r);
            }
            program_subtests = 0;
        }
    }
    results
}

fn parse_result(line: &str) -> Option<Result> {
    let (ok, rest) = if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else if let Some(r) = line.strip_prefix("not ok ") {
        (false, r)
    } else {
        return None;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim();
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n, d),
        None => (rest, ""),
    };
    let name = name.trim_start_matches("- ").to_string();
    Some(Result {
        name,
        ok,
        skip: directive.to_ascii_uppercase().starts_with("SKIP"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_results_are_counted() {
        let out = "TAP version 13\n1..2\n# selftests: balloon: a.sh\n# TAP version 13\n# 1..2\n# ok 1 first\n# not ok 2 second\nnot ok 1 selftests: balloon: a.sh # exit=1\n# selftests: balloon: b.sh\nok 2 selftests: balloon: b.sh\n";
        let r = parse(out);
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[0],
            Result {
                name: "first".into(),
                ok: true,
                skip: false
            }
        );
        assert!(!r[1].ok);
        assert!(!r[2].ok && r[2].name.contains("a.sh"));
        assert!(r[3].ok && r[3].name.contains("b.sh"));
    }

    #[test]
    fn skips_are_seen() {
        let r =
            parse("# ok 1 debugfs counters # SKIP not our driver\nok 1 selftests: balloon: c.sh\n");
        assert_eq!(r.len(), 1);
        assert!(r[0].skip && r[0].ok);
    }
}
