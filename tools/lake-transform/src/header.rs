//! The syntax of a model or audit header, `KEYWORD ( properties ) ;`: tokens, a small
//! recursive-descent parser into a tree of items (words, strings, numbers, calls,
//! tuples, `key = value`), with the line of each. What the properties mean is
//! `model.rs`'s business.

use std::path::Path;

use crate::model::ModelError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Word(String),
    Str(String),
    Num(String),
    LParen,
    RParen,
    Comma,
    Assign,
    Semi,
}

pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer { src: src.as_bytes(), pos: 0, line: 1 }
    }

    fn skip_trivia(&mut self) {
        loop {
            match self.src.get(self.pos) {
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(c) if c.is_ascii_whitespace() => self.pos += 1,
                Some(b'-') if self.src.get(self.pos + 1) == Some(&b'-') => {
                    while self.src.get(self.pos).is_some_and(|&c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                Some(b'/') if self.src.get(self.pos + 1) == Some(&b'*') => {
                    self.pos += 2;
                    while self.pos < self.src.len() && !self.src[self.pos..].starts_with(b"*/") {
                        if self.src[self.pos] == b'\n' {
                            self.line += 1;
                        }
                        self.pos += 1;
                    }
                    self.pos = (self.pos + 2).min(self.src.len());
                }
                _ => return,
            }
        }
    }

    /// Next token and its line; `None` at the end.
    fn next(&mut self) -> Result<Option<(Tok, usize)>, (usize, String)> {
        self.skip_trivia();
        let line = self.line;
        let Some(&c) = self.src.get(self.pos) else { return Ok(None) };
        let tok = match c {
            b'(' => Tok::LParen,
            b')' => Tok::RParen,
            b',' => Tok::Comma,
            b';' => Tok::Semi,
            b'=' => Tok::Assign,
            b':' if self.src.get(self.pos + 1) == Some(&b'=') => {
                self.pos += 2;
                return Ok(Some((Tok::Assign, line)));
            }
            b'\'' => {
                let mut s = Vec::new();
                self.pos += 1;
                loop {
                    match self.src.get(self.pos) {
                        None => return Err((line, "unterminated string".into())),
                        Some(b'\'') if self.src.get(self.pos + 1) == Some(&b'\'') => {
                            s.push(b'\'');
                            self.pos += 2;
                        }
                        Some(b'\'') => break,
                        Some(&ch) => {
                            if ch == b'\n' {
                                self.line += 1;
                            }
                            s.push(ch);
                            self.pos += 1;
                        }
                    }
                }
                self.pos += 1;
                return Ok(Some((Tok::Str(String::from_utf8_lossy(&s).into_owned()), line)));
            }
            c if c.is_ascii_digit() || c == b'-' || c == b'.' => {
                let start = self.pos;
                self.pos += 1;
                while self.src.get(self.pos).is_some_and(|c| c.is_ascii_digit() || b".eE+-".contains(c)) {
                    self.pos += 1;
                }
                let s = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
                return Ok(Some((Tok::Num(s), line)));
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'"' => {
                let start = self.pos;
                while self.src.get(self.pos).is_some_and(|c| c.is_ascii_alphanumeric() || b"_.\"".contains(c)) {
                    self.pos += 1;
                }
                let s = String::from_utf8_lossy(&self.src[start..self.pos]).into_owned();
                return Ok(Some((Tok::Word(s), line)));
            }
            other => return Err((line, format!("unexpected character {:?}", other as char))),
        };
        self.pos += 1;
        Ok(Some((tok, line)))
    }
}

// ---- parse tree ------------------------------------------------------------

/// A property value or argument, as written.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Word(String),
    Str(String),
    Num(String),
    Call(String, Vec<Item>),
    Tuple(Vec<Item>),
}

/// `key := value`, `key value`, or a bare value.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) key: Option<String>,
    pub(crate) val: Val,
    pub(crate) line: usize,
}

pub(crate) struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<Option<(Tok, usize)>>,
    path: &'a Path,
}

impl<'a> Parser<'a> {
    fn err(&self, line: usize, msg: impl Into<String>) -> ModelError {
        ModelError { path: self.path.to_owned(), line, msg: msg.into() }
    }

    fn peek(&mut self) -> Result<Option<(Tok, usize)>, ModelError> {
        if self.peeked.is_none() {
            let t = self.lex.next().map_err(|(l, m)| self.err(l, m))?;
            self.peeked = Some(t);
        }
        Ok(self.peeked.clone().flatten())
    }

    fn next(&mut self) -> Result<Option<(Tok, usize)>, ModelError> {
        let t = self.peek()?;
        self.peeked = None;
        Ok(t)
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<usize, ModelError> {
        match self.next()? {
            Some((t, line)) if t == want => Ok(line),
            Some((t, line)) => Err(self.err(line, format!("expected {what}, found {}", show(&t)))),
            None => Err(self.err(self.lex.line, format!("expected {what}, found the end of the file"))),
        }
    }

    /// `( item, item, ... )` after the opening paren was consumed.
    fn items(&mut self) -> Result<Vec<Item>, ModelError> {
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                Some((Tok::RParen, _)) => {
                    self.next()?;
                    return Ok(out);
                }
                Some(_) => {}
                None => return Err(self.err(self.lex.line, "unclosed '('")),
            }
            out.push(self.item()?);
            match self.next()? {
                Some((Tok::Comma, _)) => {}
                Some((Tok::RParen, _)) => return Ok(out),
                Some((t, line)) => return Err(self.err(line, format!("expected ',' or ')', found {}", show(&t)))),
                None => return Err(self.err(self.lex.line, "unclosed '('")),
            }
        }
    }

    fn item(&mut self) -> Result<Item, ModelError> {
        let (tok, line) = self.next()?.ok_or_else(|| self.err(self.lex.line, "unexpected end of file"))?;
        if let Tok::Word(w) = &tok {
            match self.peek()? {
                Some((Tok::Assign, _)) => {
                    self.next()?;
                    let val = self.value()?;
                    return Ok(Item { key: Some(w.clone()), val, line });
                }
                Some((Tok::Word(_) | Tok::Str(_) | Tok::Num(_), _)) => {
                    let val = self.value()?;
                    return Ok(Item { key: Some(w.clone()), val, line });
                }
                _ => {}
            }
        }
        let val = self.value_from(tok, line)?;
        Ok(Item { key: None, val, line })
    }

    fn value(&mut self) -> Result<Val, ModelError> {
        let (tok, line) = self.next()?.ok_or_else(|| self.err(self.lex.line, "expected a value"))?;
        self.value_from(tok, line)
    }

    fn value_from(&mut self, tok: Tok, line: usize) -> Result<Val, ModelError> {
        Ok(match tok {
            Tok::Str(s) => Val::Str(s),
            Tok::Num(n) => Val::Num(n),
            Tok::LParen => Val::Tuple(self.items()?),
            Tok::Word(w) => {
                if matches!(self.peek()?, Some((Tok::LParen, _))) {
                    self.next()?;
                    Val::Call(w, self.items()?)
                } else {
                    Val::Word(w)
                }
            }
            t => return Err(self.err(line, format!("expected a value, found {}", show(&t)))),
        })
    }
}

pub(crate) fn show(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("'{w}'"),
        Tok::Str(s) => format!("'{s}' (a string)"),
        Tok::Num(n) => n.clone(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::Assign => "':='".into(),
        Tok::Semi => "';'".into(),
    }
}

/// Parse `KEYWORD ( props ) ;` at the start of `src`; returns the properties and the
/// byte offset and line where the SQL starts.
pub(crate) fn header(src: &str, keyword: &str, path: &Path) -> Result<(Vec<Item>, usize, usize), ModelError> {
    let mut p = Parser { lex: Lexer::new(src), peeked: None, path };
    match p.next()? {
        Some((Tok::Word(w), _)) if w.eq_ignore_ascii_case(keyword) => {}
        Some((_, line)) => return Err(p.err(line, format!("expected the file to start with {keyword} (...)"))),
        None => return Err(p.err(1, format!("empty file: expected {keyword} (...)"))),
    }
    p.expect(Tok::LParen, "'('")?;
    let props = p.items()?;
    if matches!(p.peek()?, Some((Tok::Semi, _))) {
        p.next()?;
    }
    // Where the SQL starts: past the whitespace after the header.
    let rest = &src[p.lex.pos..];
    let lead = rest.len() - rest.trim_start().len();
    let line = p.lex.line + rest[..lead].matches('\n').count();
    Ok((props, p.lex.pos + lead, line))
}

/// At the top of a header, `grain (a, b)` reads like a call: it is property `grain`
/// with the tuple `(a, b)`.
pub(crate) fn as_property(item: Item) -> Item {
    match item {
        Item { key: None, val: Val::Call(name, items), line } => Item { key: Some(name), val: Val::Tuple(items), line },
        other => other,
    }
}

pub(crate) fn idents(v: &Val) -> Option<Vec<String>> {
    match v {
        Val::Word(w) => Some(vec![w.clone()]),
        Val::Tuple(items) => items
            .iter()
            .map(|i| match (&i.key, &i.val) {
                (None, Val::Word(w)) => Some(w.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}
