//! Shell-style wildcards, the one matcher: landing patterns (lake-transform's ingest
//! models, segment by segment) and tag-deploy's release tag pattern.

/// Shell-style match of a whole string: `*` any run of characters, `?` one character,
/// anything else itself. Used for landing patterns and tag-deploy's tag pattern.
pub fn wildcard(pat: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_the_whole_string() {
        assert!(wildcard("*.csv.gzip", "a_0.csv.gzip"));
        assert!(wildcard("20??", "2024"));
        assert!(!wildcard("*.csv.gzip", "a.csv.gzip.tmp"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("a*b", "acbd"));
        // Tag patterns (tag-deploy).
        assert!(wildcard("v*", "v12") && wildcard("v1.*", "v1.2.3") && !wildcard("v1.*", "v2.0.0") && wildcard("*", "x"));
        assert!(wildcard("v*.0", "v1.0.0") && !wildcard("v*.0", "v1.0.1") && !wildcard("v*", "é") && wildcard("*é", "xé"));
    }
}
