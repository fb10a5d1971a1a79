//! Stop strings: generation ends once the decoded output contains one of them (transformers'
//! `stop_strings`), and the text handed back ends before it. While streaming, the tail that could
//! still grow into a stop string is held back, so that no part of one is ever shown. It works on
//! decoded text only and never looks at token ids.

use anyhow::{Result, ensure};

/// The stop strings of one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopStrings {
    strings: Vec<String>,
}

/// Where a stop string was found in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopMatch {
    /// Byte offset where the kept text ends: the stop string's start.
    pub cut: usize,
    /// Which stop string (index into the list given to `StopStrings::new`).
    pub index: usize,
}

impl StopStrings {
    /// Refuses an empty stop string, which would stop every generation before its first token.
    pub fn new<S: Into<String>>(strings: impl IntoIterator<Item = S>) -> Result<StopStrings> {
        let strings: Vec<String> = strings.into_iter().map(Into::into).collect();
        ensure!(
            strings.iter().all(|s| !s.is_empty()),
            "a stop string is empty"
        );
        Ok(StopStrings { strings })
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// The earliest stop string in `output` (the generated text so far, without the prompt).
    /// Checked after every token, the first match is the one the last token completed, as
    /// transformers' criterion finds it (one that ran past the stop string's end included).
    pub fn find(&self, output: &str) -> Option<StopMatch> {
        self.strings
            .iter()
            .enumerate()
            .filter_map(|(index, stop)| {
                output
                    .find(stop.as_str())
                    .map(|cut| StopMatch { cut, index })
            })
            .min_by_key(|found| found.cut)
    }

    /// How many bytes at the end of `output` to withhold while streaming: the longest tail that
    /// is the start of a stop string (and so may turn into one with the next tokens). Call it
    /// when `find` found nothing; what lies before the tail is safe to show.
    pub fn holdback(&self, output: &str) -> usize {
        self.strings
            .iter()
            .filter_map(|stop| {
                // A tail shorter than the stop string that it starts with; longest first.
                let longest = (stop.len() - 1).min(output.len());
                (1..=longest)
                    .rev()
                    .filter(|&len| output.is_char_boundary(output.len() - len))
                    .find(|&len| stop.starts_with(&output[output.len() - len..]))
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(strings: &[&str]) -> StopStrings {
        StopStrings::new(strings.iter().copied()).unwrap()
    }

    #[test]
    fn finds_the_earliest_stop_string_and_cuts_before_it() {
        let stop = stops(&["<|im_end|>", "\n\n"]);
        assert_eq!(stop.find("Paris."), None);
        let found = stop.find("Paris.<|im_end|>").unwrap();
        assert_eq!((found.cut, found.index), (6, 0));
        // The last token may run past the stop string: the cut drops the overhang too.
        let found = stop.find("Paris.\n\nBut also").unwrap();
        assert_eq!(&"Paris.\n\nBut also"[..found.cut], "Paris.");
        assert_eq!(found.index, 1);
        // Of two, the one that starts first wins.
        assert_eq!(stop.find("a\n\nb<|im_end|>").unwrap().cut, 1);
    }

    #[test]
    fn holds_back_a_tail_that_may_become_a_stop_string() {
        let stop = stops(&["STOP", "Stopped"]);
        assert_eq!(stop.holdback("Hello"), 0);
        assert_eq!(stop.holdback("Hello S"), 1);
        assert_eq!(stop.holdback("Hello ST"), 2);
        assert_eq!(stop.holdback("Hello Stoppe"), 6);
        // A whole stop string is `find`'s business; the tail "P" starts none.
        assert_eq!(stop.holdback("STOP"), 0);
        assert_eq!(stop.holdback(""), 0);
    }

    #[test]
    fn holdback_respects_characters() {
        let stop = stops(&["éé!"]);
        assert_eq!(stop.holdback("café"), "é".len());
        assert_eq!(stop.holdback("caféé"), "éé".len());
        assert_eq!(stops(&["🎬 end"]).holdback("scene 🎬"), "🎬".len());
    }

    #[test]
    fn streaming_never_shows_part_of_a_stop_string() {
        let stop = stops(&["</answer>"]);
        let tokens = [
            "The", " answer", " is", " 4", "</", "ans", "wer", ">", " ignored",
        ];
        let (mut output, mut shown) = (String::new(), 0);
        let mut streamed = String::new();
        for token in tokens {
            output.push_str(token);
            if let Some(found) = stop.find(&output) {
                streamed.push_str(&output[shown..found.cut]);
                break;
            }
            let safe = output.len() - stop.holdback(&output);
            streamed.push_str(&output[shown..safe]);
            shown = safe;
            assert!(!streamed.contains('<'), "{streamed:?}");
        }
        assert_eq!(streamed, "The answer is 4");
    }

    #[test]
    fn an_empty_stop_string_is_refused() {
        let err = StopStrings::new(["ok", ""]).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
