//! Text from untrusted hands, cut to a size before it is kept or logged.
//!
//! A guest can hand back strings as long as its memory: an error message, a
//! backtrace's function names, a panic on stderr. Whatever of them the host
//! keeps (in a task, a log line, Redis) is cut here first.

/// `s` if it is at most `max` bytes; otherwise its start, cut at a
/// character boundary, and a note of how many bytes were cut, the whole at
/// most `max` bytes (`max` of at least 64 leaves room for the note).
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    // The note's length depends on the number it carries; the number is at
    // most `s.len()`, so reserving for that many digits always fits.
    let reserve = " … (".len() + s.len().to_string().len() + " bytes cut)".len();
    let mut keep = max.saturating_sub(reserve);
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{} … ({} bytes cut)", &s[..keep], s.len() - keep)
}

/// The end of `s`, at most `max` bytes, cut at a character boundary.
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_keep_the_start_say_how_much_and_fit() {
        assert_eq!(cut("short", 64), "short");
        let long = "é".repeat(10_000);
        let out = cut(&long, 100);
        assert!(out.len() <= 100, "{} bytes", out.len());
        assert!(out.starts_with("éé"));
        let kept = out.split(" … (").next().unwrap().len();
        assert!(out.ends_with(&format!("({} bytes cut)", long.len() - kept)), "{out}");
        assert_eq!(tail("abcdé", 2), "é");
        assert_eq!(tail("abc", 10), "abc");
    }
}
