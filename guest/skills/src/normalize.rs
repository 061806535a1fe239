//! Skill and place names, normalised so that people's spellings compare equal.

/// Common spellings of the same skill, mapped to one name. Keys are already
/// in the normalised form `skill_key` produces before the alias step.
const ALIASES: &[(&str, &str)] = &[
    ("js", "javascript"),
    ("ecmascript", "javascript"),
    ("ts", "typescript"),
    ("k8s", "kubernetes"),
    ("kube", "kubernetes"),
    ("postgres", "postgresql"),
    ("psql", "postgresql"),
    ("pg", "postgresql"),
    ("golang", "go"),
    ("py", "python"),
    ("python3", "python"),
    ("reactjs", "react"),
    ("nodejs", "node"),
    ("vuejs", "vue"),
    ("tf", "terraform"),
    ("gcp", "google cloud"),
    ("aws", "amazon web services"),
    ("ml", "machine learning"),
    ("cpp", "c++"),
    ("csharp", "c#"),
    ("dotnet", ".net"),
];

/// The comparison key of a skill name: lower case, punctuation dropped
/// (except the `+`, `#` and leading `.` that tell C++, C# and .NET apart),
/// runs of spaces collapsed, then common aliases resolved.
pub fn skill_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    skill_key_into(name, &mut key);
    key
}

/// [`skill_key`] written into `key`, whose allocation is reused: the
/// matcher looks up every skill of every posting.
pub fn skill_key_into(name: &str, key: &mut String) {
    key.clear();
    let mut pending_space = false;
    for ch in name.trim().chars() {
        if ch.is_alphanumeric() || ch == '+' || ch == '#' || (ch == '.' && key.is_empty()) {
            if pending_space && !key.is_empty() {
                key.push(' ');
            }
            pending_space = false;
            if ch.is_ascii() {
                key.push(ch.to_ascii_lowercase());
            } else {
                key.extend(ch.to_lowercase());
            }
        } else if ch.is_whitespace() || ch == '-' || ch == '_' || ch == '/' {
            pending_space = true;
        }
        // Other punctuation ("node.js", "rust!") is dropped without a gap.
    }
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == key.as_str()) {
        key.clear();
        key.push_str(to);
    }
}

/// The comparison key of a place: trimmed, lower case, inner spaces
/// collapsed. Written in one pass (a word of ASCII lowered in place), with
/// the same result as lowering each word and joining them with a space.
pub fn place(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for word in name.split_whitespace() {
        if !key.is_empty() {
            key.push(' ');
        }
        if word.is_ascii() {
            let start = key.len();
            key.push_str(word);
            key[start..].make_ascii_lowercase();
        } else {
            key.push_str(&word.to_lowercase());
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_compare_equal() {
        assert_eq!(skill_key("JS"), "javascript");
        assert_eq!(skill_key(" Node.js "), "node");
        assert_eq!(skill_key("K8s"), "kubernetes");
        assert_eq!(skill_key("Postgres"), skill_key("PostgreSQL"));
        assert_eq!(skill_key("C++"), "c++");
        assert_eq!(skill_key("C#"), "c#");
        assert_eq!(skill_key(".NET"), ".net");
        assert_eq!(skill_key("machine-learning"), "machine learning");
        assert_eq!(skill_key("ML"), "machine learning");
    }

    #[test]
    fn places_ignore_case_and_spacing() {
        assert_eq!(place("  New   York "), place("new york"));
    }
}
