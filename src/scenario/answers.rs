//! Answers files: the tester's answers to confirm steps for unattended runs.
//!
//! ```yaml
//! answers:
//!   - case: "technical-test/known-patient/*"   # a case id; `*` matches any run of characters
//!     fact: referral-filed
//!     answer: yes
//!     note: seen in the cardiology worklist
//! ```

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::load::{InputError, parse_yaml, read_text};
use super::model::ConfirmFact;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswersDoc {
    answers: Vec<Spanned<AnswerDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerDoc {
    case: String,
    fact: ConfirmFact,
    answer: bool,
    #[serde(default)]
    note: Option<String>,
}

/// One answer: which cases and fact it covers, and what was answered.
#[derive(Debug, Clone)]
pub struct AnswerRule {
    pub case_pattern: String,
    pub fact: ConfirmFact,
    pub confirmed: bool,
    pub note: Option<String>,
    /// `file:line`, shown in reports as the answer's source.
    pub source: String,
}

/// Loads an answers file.
pub fn load_answers(path: &Path) -> Result<Vec<AnswerRule>, InputError> {
    let file = path.display().to_string();
    let text = read_text(path)?;
    let doc: AnswersDoc = parse_yaml(&file, &text)?;
    let mut rules = Vec::new();
    for spanned in doc.answers {
        if spanned.value.case.trim().is_empty() {
            return Err(InputError::at(
                &file,
                &text,
                &spanned,
                "`case` needs a case id or a pattern with `*`",
            ));
        }
        rules.push(AnswerRule {
            source: format!("answers file {file}:{}", spanned.referenced.line()),
            case_pattern: spanned.value.case,
            fact: spanned.value.fact,
            confirmed: spanned.value.answer,
            note: spanned.value.note,
        });
    }
    Ok(rules)
}

/// Matches `text` against a pattern in which `*` stands for any run of characters.
pub fn matches_pattern(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(index) => rest = &rest[index + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_with_stars() {
        assert!(matches_pattern("a/*/c", "a/b/c"));
        assert!(matches_pattern("*", "anything"));
        assert!(matches_pattern(
            "technical-test/*",
            "technical-test/known-patient/x"
        ));
        assert!(!matches_pattern(
            "1-op-1/*",
            "technical-test/known-patient/x"
        ));
        assert!(!matches_pattern("a*b*c", "acb"));
        assert!(matches_pattern("exact", "exact"));
    }

    #[test]
    fn an_answers_file_loads_and_a_bad_fact_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("answers.yaml");
        std::fs::write(
            &path,
            "answers:\n  - case: \"*\"\n    fact: referral-filed\n    answer: yes\n",
        )
        .unwrap();
        let rules = load_answers(&path).unwrap();
        assert!(rules[0].confirmed && rules[0].source.ends_with(":2"));
        std::fs::write(
            &path,
            "answers:\n  - case: \"*\"\n    fact: filed\n    answer: yes\n",
        )
        .unwrap();
        let error = load_answers(&path).unwrap_err().to_string();
        assert!(error.contains("answers.yaml:3:11"), "{error}");
    }
}
