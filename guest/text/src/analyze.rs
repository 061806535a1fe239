//! Text analysis: tokens, stop words, a light stemmer.

/// English words too common to say anything about a match. Sorted, for
/// binary search.
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "do", "for", "from", "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its", "me",
    "more", "my", "no", "not", "of", "on", "or", "our", "out", "she", "so", "some", "such", "than", "that", "the",
    "their", "them", "then", "there", "these", "they", "this", "to", "up", "us", "was", "we", "were", "what", "when",
    "where", "which", "who", "will", "with", "you", "your",
];

/// The analysed terms of `text`, in order, with repeats.
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '+' || c == '#'))
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .filter(|t| STOP_WORDS.binary_search(&t.as_str()).is_err())
        .map(|t| stem(&t))
        .collect()
}

/// Strips one common English suffix, leaving at least a three-letter stem:
/// "engineers" and "engineering" both become "engineer", "databases" becomes
/// "database". Deliberately light: a wrong merge costs more than a miss.
fn stem(word: &str) -> String {
    const SUFFIXES: &[(&str, &str)] = &[("ies", "y"), ("ing", ""), ("ed", ""), ("es", "e"), ("s", ""), ("ly", "")];
    if word.ends_with("ss") {
        return word.to_string();
    }
    for (suffix, replacement) in SUFFIXES {
        if let Some(stem) = word.strip_suffix(suffix)
            && stem.chars().count() >= 3
        {
            return format!("{stem}{replacement}");
        }
    }
    word.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn analysis() {
        assert_eq!(terms("The Engineers, engineering databases!"), ["engineer", "engineer", "database"]);
        assert_eq!(terms("C++ and C# on Kubernetes"), ["c++", "c#", "kubernete"]);
        assert_eq!(terms("business"), ["business"]);
        assert_eq!(terms("companies"), ["company"]);
    }
}
