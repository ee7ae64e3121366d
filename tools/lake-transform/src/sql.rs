//! SQL text as the engine reads it: where the code is, outside comments and quoted text.
//! One scanner for everything that looks into model SQL (the tables it reads, whether
//! it is one statement).

/// `sql` with the inside of every comment and quoted text (`'…'`, `"…"`, `$tag$…$tag$`)
/// blanked out: comments become spaces, quoted text keeps its quotes around spaces.
/// Newlines and byte offsets are kept, so positions and line numbers carry over.
pub fn mask(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut [u8], from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = b[i + 2..].windows(2).position(|w| w == b"*/").map_or(b.len(), |p| i + 2 + p + 2);
                blank(&mut out, i, end);
                i = end;
            }
            q @ (b'\'' | b'"') => {
                // Up to the closing quote; a doubled quote is a quote inside.
                let mut j = i + 1;
                while j < b.len() && !(b[j] == q && b.get(j + 1) != Some(&q)) {
                    j += if b[j] == q { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            }
            b'$' => {
                let tag_end = b[i + 1..].iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_')).map(|p| i + 1 + p);
                match tag_end.filter(|&t| b[t] == b'$') {
                    Some(t) => {
                        let tag = &b[i..=t];
                        let close = b[t + 1..].windows(tag.len()).position(|w| w == tag).map(|p| t + 1 + p);
                        let end = close.unwrap_or(b.len());
                        blank(&mut out, t + 1, end);
                        i = end + tag.len();
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    // Only ASCII bytes were written, over whole quoted or commented spans.
    String::from_utf8(out).unwrap_or_default()
}

/// The one SQL statement of a model or audit body (`first_line` is the line it starts
/// on), without its final `;`. A second statement is refused: the engine runs the body
/// inside its own `CREATE TABLE … AS`, so a `; COMMIT`, `; COPY … TO`, `; ATTACH` or
/// `; SET` would run outside its control (the run's one transaction, the sandbox).
/// Strings, quoted names, dollar-quoted strings and comments are skipped.
pub fn one_statement(body: &str, first_line: usize) -> Result<String, (usize, String)> {
    let code = crate::sql::mask(body);
    let Some(end) = code.find(';') else { return Ok(body.trim().to_owned()) };
    if let Some(more) = code[end + 1..].find(|c: char| !c.is_ascii_whitespace()) {
        let line = first_line + code[..end + 1 + more].matches('\n').count();
        return Err((
            line,
            "a model or audit is one SQL query: no statement may follow ';' (COMMIT, COPY, ATTACH, SET and the like are not allowed)".into(),
        ));
    }
    Ok(body[..end].trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn comments_and_quoted_text_are_blanked_positions_kept() {
        let sql = "SELECT 'a;b', \"x.y\" -- c.d;\nFROM s.t /* u.v\n; */ WHERE $q$ p.q; $q$ = 'it''s'";
        let m = mask(sql);
        assert_eq!(m.len(), sql.len());
        assert_eq!(m.lines().count(), sql.lines().count());
        assert!(!m.contains(';') && !m.contains("x.y") && !m.contains("u.v") && !m.contains("p.q"), "{m}");
        assert!(m.contains("FROM s.t") && m.contains("'   '") && m.contains("$q$"), "{m}");
        assert_eq!(mask("SELECT 'é;'"), "SELECT '   '");
    }
}

#[cfg(test)]
mod statement_tests {
    use super::one_statement;

    #[test]
    fn a_body_is_one_statement() {
        assert_eq!(one_statement("SELECT 1;\n-- done\n", 3), Ok("SELECT 1".into()));
        assert_eq!(one_statement(" SELECT ';' AS a, \"x;\" FROM t /* ; */ -- ;\n", 1), Ok("SELECT ';' AS a, \"x;\" FROM t /* ; */ -- ;".into()));
        let dollars = "SELECT $$;$$, $t$ ; $t$, 'it''s;'";
        assert_eq!(one_statement(dollars, 1), Ok(dollars.into()));
        for (body, line) in
            [("SELECT 1; COMMIT", 1), ("SELECT 1\n;\nCOPY t TO 'x'", 3), ("SELECT 1; /* c */ ATTACH 'f'", 1), ("SELECT 'a;'\n; SET x = 1", 2)]
        {
            let (l, msg) = one_statement(body, 1).unwrap_err();
            assert_eq!(l, line, "{body}");
            assert!(msg.contains("no statement may follow ';'"), "{msg}");
        }
    }
}
