//! An error and its causes as one line, the way every log line, status row and exit message
//! prints them.

/// An error's message followed by those of its causes, each said once: reqwest says "error
/// sending request" and the reason (a refused client certificate, a connection reset) is further
/// down the chain, while hyper and sqlx repeat their inner error in their own message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner broke")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Wraps(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner broke")]
    struct Inner;

    #[test]
    fn a_chain_is_one_line_without_repeats() {
        assert_eq!(chain(&Repeats(Inner)), "outer: inner broke");
        assert_eq!(chain(&Wraps(Inner)), "outer: inner broke");
        assert_eq!(chain(&Inner), "inner broke");
    }
}
