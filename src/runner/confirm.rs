//! Answers to confirm steps that no inspection API can answer: from an answers file, or
//! from the tester at a terminal prompt. Without either, a confirm step is not run: it is
//! never counted as passed.

use std::io::{BufRead, Write};

use crate::scenario::answers::{AnswerRule, matches_pattern};

/// An answer to one confirm step.
#[derive(Debug, Clone)]
pub struct Answer {
    pub confirmed: bool,
    /// Where it came from: the answers file and line, or the terminal.
    pub source: String,
    pub note: Option<String>,
}

/// The sources of answers for a run.
#[derive(Debug, Default)]
pub struct Confirmations {
    rules: Vec<AnswerRule>,
    interactive: bool,
    /// One prompt at a time, even with concurrent cases.
    prompt: tokio::sync::Mutex<()>,
}

impl Confirmations {
    /// Answers from `rules`, and prompts when `interactive`.
    pub fn new(rules: Vec<AnswerRule>, interactive: bool) -> Self {
        Self {
            rules,
            interactive,
            prompt: tokio::sync::Mutex::new(()),
        }
    }

    /// The first rule that covers the case and fact.
    pub fn answer_for(&self, case_id: &str, fact: &str) -> Option<Answer> {
        self.rules
            .iter()
            .find(|r| r.fact.name() == fact && matches_pattern(&r.case_pattern, case_id))
            .map(|r| Answer {
                confirmed: r.confirmed,
                source: r.source.clone(),
                note: r.note.clone(),
            })
    }

    /// Asks at the terminal (stderr for the question, stdin for the answer). `None` when
    /// not interactive, at end of input, or when the tester skips.
    pub async fn ask(&self, case_name: &str, prompt: &str) -> Option<Answer> {
        if !self.interactive {
            return None;
        }
        let _turn = self.prompt.lock().await;
        let question = format!(
            "\nconfirm [{case_name}]\n  {prompt}\n  answer y (yes), n (no) or Enter to skip: "
        );
        let line = tokio::task::spawn_blocking(move || {
            let mut stderr = std::io::stderr();
            let _ = stderr.write_all(question.as_bytes());
            let _ = stderr.flush();
            let mut line = String::new();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line),
            }
        })
        .await
        .ok()
        .flatten()?;
        let confirmed = match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" | "j" | "ja" => true,
            "n" | "no" | "nee" => false,
            _ => return None,
        };
        Some(Answer {
            confirmed,
            source: "the tester at the terminal".to_owned(),
            note: None,
        })
    }
}
