//! The CSV inside a PSD zip, checked line by line as it streams: the header, then every
//! row against the dialect and types raw.psd reads it with, so that what lands always
//! loads. The first bad line is named with its number and why.

/// The PSD CSV header, exactly.
pub const PSD_HEADER: &str = "Commodity_Code,Commodity_Description,Country_Code,Country_Name,Market_Year,\
Calendar_Year,Month,Attribute_ID,Attribute_Description,Unit_ID,Unit_Description,Value";

/// The longest line a release may have: real PSD lines are under 200 bytes, and DuckDB
/// refuses lines over 2 MB, which would fail every transform after the release landed.
pub const MAX_LINE: usize = 4096;

/// Streaming checks on the CSV, line by line: the first line is the PSD header; every
/// data row is one that the models can load (read_csv with the types of raw.psd):
/// UTF-8, at most [`MAX_LINE`] bytes, the header's line ending, 12 fields with sound
/// quoting, codes of letters and digits, 4-digit years, a month 0–12, a numeric (or
/// empty) `Value`. Blank lines are skipped, as DuckDB skips them. The first bad line
/// is reported with its number and why.
#[derive(Debug, Default)]
pub(crate) struct CsvScan {
    line: Vec<u8>,
    /// The number (1-based) of the line in `line`.
    line_no: u64,
    header_done: bool,
    /// Whether the header ended in CRLF: every line must end the same way.
    crlf: bool,
    rows: u64,
}

impl CsvScan {
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) -> Result<(), String> {
        while !chunk.is_empty() {
            let (part, rest, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            if self.line.len() + part.len() > MAX_LINE + 1 {
                return Err(match self.header_done {
                    true => format!("line {} is longer than {MAX_LINE} bytes", self.line_no + 1),
                    false => "no CSV header line in the first 4 KiB".into(),
                });
            }
            self.line.extend_from_slice(part);
            if ended {
                self.end_line(true)?;
            }
            chunk = rest;
        }
        Ok(())
    }

    fn end_line(&mut self, terminated: bool) -> Result<(), String> {
        self.line_no += 1;
        let n = self.line_no;
        let cr = self.line.last() == Some(&b'\r');
        let line = if cr { &self.line[..self.line.len() - 1] } else { &self.line[..] };
        if !self.header_done {
            self.crlf = cr;
            check_header(line)?;
            self.header_done = true;
        } else if !line.is_empty() {
            if terminated && cr != self.crlf {
                let (this, header) = if cr { ("CRLF", "LF") } else { ("LF", "CRLF") };
                return Err(format!("line {n} ends in {this}, the header in {header}"));
            }
            check_row(line).map_err(|why| format!("line {n}: {why}"))?;
            self.rows += 1;
        }
        self.line.clear();
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<u64, String> {
        if !self.line.is_empty() || !self.header_done {
            if !self.header_done && self.line.is_empty() {
                return Err("empty CSV: no header".into());
            }
            self.end_line(false)?;
        }
        if self.rows == 0 {
            return Err("CSV has a header but no data rows".into());
        }
        Ok(self.rows)
    }
}

pub(crate) fn check_header(line: &[u8]) -> Result<(), String> {
    let h = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let h = String::from_utf8_lossy(h);
    if h == PSD_HEADER {
        return Ok(());
    }
    if h.trim().is_empty() {
        return Err("empty CSV: no header".into());
    }
    let got: Vec<&str> = h.split(',').collect();
    let want: Vec<&str> = PSD_HEADER.split(',').collect();
    for (i, w) in want.iter().enumerate() {
        match got.get(i) {
            Some(g) if g == w => {}
            Some(g) => return Err(format!("CSV header changed: column {} is {g:?}, expected {w:?}", i + 1)),
            None => return Err(format!("CSV header changed: {} columns, expected {}", got.len(), want.len())),
        }
    }
    Err(format!("CSV header changed: {} columns, expected {}", got.len(), want.len()))
}

/// The columns of a PSD row, in header order.
pub(crate) const COLUMNS: [&str; 12] = [
    "Commodity_Code",
    "Commodity_Description",
    "Country_Code",
    "Country_Name",
    "Market_Year",
    "Calendar_Year",
    "Month",
    "Attribute_ID",
    "Attribute_Description",
    "Unit_ID",
    "Unit_Description",
    "Value",
];

/// One data row: is it a row raw.psd loads?
pub(crate) fn check_row(line: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8 (byte {})", e.valid_up_to() + 1))?;
    let mut fields = [""; 12];
    let mut n = 0;
    let mut rest = text;
    loop {
        let (field, after) = split_field(rest)?;
        if n < fields.len() {
            fields[n] = field;
        }
        n += 1;
        match after {
            Some(r) => rest = r,
            None => break,
        }
    }
    if n != COLUMNS.len() {
        return Err(format!("{n} columns, expected {}", COLUMNS.len()));
    }
    let shown = |i: usize| {
        let v = fields[i];
        if v.chars().count() > 40 { format!("{:?}…", v.chars().take(40).collect::<String>()) } else { format!("{v:?}") }
    };
    for i in [0, 2, 7, 9] {
        let v = fields[i];
        if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("{} is {}, expected a code of letters and digits", COLUMNS[i], shown(i)));
        }
    }
    for i in [4, 5] {
        let v = fields[i];
        if v.len() != 4 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{} is {}, expected a 4-digit year", COLUMNS[i], shown(i)));
        }
    }
    let month = fields[6];
    if month.is_empty() || month.len() > 2 || !month.bytes().all(|b| b.is_ascii_digit()) || month.parse::<u8>().is_ok_and(|m| m > 12) {
        return Err(format!("Month is {}, expected 0-12", shown(6)));
    }
    if !is_number(fields[11]) {
        return Err(format!("Value is {}, expected a number", shown(11)));
    }
    Ok(())
}

/// The first CSV field of `s` (quotes removed; a quoted field keeps its `""`), and what
/// follows its comma (`None` at the end of the line).
pub(crate) fn split_field(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(q) = s.strip_prefix('"') {
        let bytes = q.as_bytes();
        let mut i = 0;
        loop {
            match bytes.get(i) {
                None => return Err("a quoted field is not closed".into()),
                Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                Some(b'"') => break,
                Some(_) => i += 1,
            }
        }
        let field = &q[..i];
        match bytes.get(i + 1) {
            None => Ok((field, None)),
            Some(b',') => Ok((field, Some(&q[i + 2..]))),
            Some(_) => Err("text after a closing quote".into()),
        }
    } else {
        let (field, after) = match s.find(',') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        if field.contains('"') {
            return Err("a quote inside an unquoted field".into());
        }
        Ok((field, after))
    }
}

/// A number DuckDB reads as DOUBLE (`-1`, `60500.0000`, `1.5e3`), or empty (NULL).
pub(crate) fn is_number(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let v = v.strip_prefix(['-', '+']).unwrap_or(v);
    let (mantissa, exp) = match v.find(['e', 'E']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.len() <= 3 && digits(e)
    });
    mantissa_ok && exp_ok && v.len() <= 40
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> Result<u64, String> {
        let mut s = CsvScan::default();
        for p in parts {
            s.feed(p)?;
        }
        s.finish()
    }

    const ROW: &str = "0711100,\"Coffee, Green\",AG,\"Algeria\",2003,2012,06,029,\"Arabica Production\",02,\"(1000 60 KG BAGS)\",1800.0000";

    fn csv(rows: &[&str], eol: &str) -> String {
        let mut s = format!("{PSD_HEADER}{eol}");
        for r in rows {
            s.push_str(r);
            s.push_str(eol);
        }
        s
    }

    #[test]
    fn csv_scan_checks_header_and_counts_rows_across_chunks() {
        let h = PSD_HEADER.as_bytes();
        let two = csv(&[ROW, ROW], "\r\n");
        let b = two.as_bytes();
        assert_eq!(scan(&[&b[..7], &b[7..200], &b[200..]]), Ok(2));
        assert_eq!(scan(&[&h[..10], &h[10..], format!("\n{ROW}\n\n").as_bytes()]), Ok(1));
        assert_eq!(scan(&[b"\xEF\xBB\xBF", h, format!("\n{ROW}").as_bytes()]), Ok(1), "no final newline");
        assert_eq!(scan(&[h, b"\r\n"]), Err("CSV has a header but no data rows".into()));
        assert_eq!(scan(&[h]), Err("CSV has a header but no data rows".into()));
        assert_eq!(scan(&[]), Err("empty CSV: no header".into()));
        let changed = PSD_HEADER.replace("Value", "Amount");
        assert_eq!(scan(&[changed.as_bytes(), b"\n1\n"]), Err("CSV header changed: column 12 is \"Amount\", expected \"Value\"".into()));
        let more = format!("{PSD_HEADER},Extra\n1\n");
        assert!(scan(&[more.as_bytes()]).unwrap_err().contains("13 columns, expected 12"));
    }

    #[test]
    fn every_row_is_checked_and_the_first_bad_line_is_named() {
        // Rows the models load: quoted or not, negative, exponent, empty value, month 00.
        let good = [
            ROW.to_owned(),
            ROW.replace("1800.0000", "-3.5"),
            ROW.replace("1800.0000", "1.5e3"),
            ROW.replace("1800.0000", ""),
            ROW.replace(",06,", ",00,"),
            ROW.replace("\"Algeria\"", "\"Al \"\"x\"\", geria\"").replace("0711100", "\"0711100\""),
        ];
        let good: Vec<&str> = good.iter().map(String::as_str).collect();
        assert_eq!(scan(&[csv(&good, "\n").as_bytes()]), Ok(6));
        let bad = [
            (ROW.replace("1800.0000", "n/a"), "line 3: Value is \"n/a\", expected a number"),
            (ROW.replace("1800.0000", "1,800"), "line 3: 13 columns, expected 12"),
            (ROW.replace(",2003,", ",03,"), "line 3: Market_Year is \"03\", expected a 4-digit year"),
            (ROW.replace(",2012,", ",2O12,"), "line 3: Calendar_Year is \"2O12\", expected a 4-digit year"),
            (ROW.replace(",06,", ",13,"), "line 3: Month is \"13\", expected 0-12"),
            (ROW.replace("0711100", ""), "line 3: Commodity_Code is \"\", expected a code of letters and digits"),
            (ROW.replace(",AG,", ",A G,"), "line 3: Country_Code is \"A G\", expected a code of letters and digits"),
            (ROW.replace("\"Algeria\"", "\"Algeria"), "line 3: text after a closing quote"),
            (ROW.replace("BAGS)\"", "BAGS)"), "line 3: a quoted field is not closed"),
            (ROW.replace("\"Algeria\"", "Alg\"eria"), "line 3: a quote inside an unquoted field"),
            (ROW.replace("\"Algeria\"", "\"Alg\"eria"), "line 3: text after a closing quote"),
            (ROW.replace(",029,", ",029,x,"), "line 3: 13 columns, expected 12"),
        ];
        for (row, want) in bad {
            assert_eq!(scan(&[csv(&[ROW, &row, ROW], "\n").as_bytes()]), Err(want.to_owned()), "{row}");
        }
        let long = ROW.replace("Algeria", &"x".repeat(MAX_LINE));
        assert_eq!(scan(&[csv(&[ROW, &long], "\n").as_bytes()]), Err(format!("line 3 is longer than {MAX_LINE} bytes")));
        let mut latin1 = csv(&[ROW], "\n").into_bytes();
        latin1.extend_from_slice(b"0711100,x,AG,Alg\xe9ria,2003,2012,06,029,x,02,x,1\n");
        assert_eq!(scan(&[&latin1]), Err("line 3: not UTF-8 (byte 17)".into()));
        let mixed = format!("{PSD_HEADER}\r\n{ROW}\r\n{ROW}\n{ROW}\r\n");
        assert_eq!(scan(&[mixed.as_bytes()]), Err("line 3 ends in LF, the header in CRLF".into()));
    }
}
