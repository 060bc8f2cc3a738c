//! The shared subject vectors (`docs/vectors/subjects.json`), which the TypeScript
//! kit's tests read too: the Rust key grammar gives exactly these subjects, and each
//! subject that is not a hashed long key reverses to its key.

use walcast::wire::key::{parse_key, parse_key_token, parse_name_token, subject_for_key};

#[test]
fn rust_subjects_equal_the_shared_vectors() {
    let text = include_str!("../docs/vectors/subjects.json");
    let vectors: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
    assert!(vectors.len() >= 40, "only {} vectors", vectors.len());
    let mut hashed = 0;
    for v in &vectors {
        let key = v["key"].as_str().unwrap();
        let subject = v["subject"].as_str().unwrap();
        assert_eq!(
            subject_for_key("walcast", key).unwrap(),
            subject,
            "key {key:?}"
        );
        let tokens: Vec<&str> = subject.splitn(4, '.').collect();
        assert_eq!(tokens.len(), 4, "{subject}");
        assert!(
            !subject.contains(['*', '>', ' ', '\t', '\n']),
            "{subject}: not one literal token per part"
        );
        let parsed = parse_key(key).unwrap();
        assert_eq!(parse_name_token(tokens[1]).unwrap(), parsed.schema);
        assert_eq!(parse_name_token(tokens[2]).unwrap(), parsed.table);
        match parse_key_token(tokens[3]) {
            Ok(values) => assert_eq!(values, parsed.values, "{subject}"),
            Err(_) => {
                assert!(tokens[3].starts_with("~H"), "{subject} does not reverse");
                hashed += 1;
            }
        }
    }
    assert!(hashed >= 2, "the vectors cover hashed long keys");
}
