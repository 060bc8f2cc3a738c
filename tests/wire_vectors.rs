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

/// The shared sealed-envelope vectors (`docs/vectors/sealed.json`): each decodes with
/// the test key ring to its documented rows, or fails with its documented error; a
/// generic MessagePack decoder reads every one (the sealed rows are plain `bin`).
#[test]
fn sealed_vectors_open_to_their_rows_or_fail_clearly() {
    use walcast::wire::codec::{decode, decode_with, to_json};
    use walcast::wire::seal::Keyring;
    let text = include_str!("../docs/vectors/sealed.json");
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    let ring = Keyring::parse(doc["keys"].as_str().unwrap()).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 5);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let hex = v["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let generic = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let generic_seq = generic
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("sequence"));
        assert_eq!(
            generic_seq.unwrap().1.as_u64(),
            v["sequence"].as_u64(),
            "{name}"
        );
        if let Some(error) = v["error"].as_str() {
            let e = decode_with(&bytes, Some(&ring)).unwrap_err().to_string();
            assert!(e.contains(error), "{name}: {e}");
            continue;
        }
        let env = decode_with(&bytes, Some(&ring)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(to_json(&env.value), v["value"], "{name}");
        assert_eq!(
            env.before.as_ref().map(to_json),
            v.get("before").cloned(),
            "{name}"
        );
        assert_eq!(
            env.compression.as_deref(),
            v["compression"].as_str(),
            "{name}"
        );
        assert_eq!(env.key_id.as_deref(), v["key_id"].as_str(), "{name}");
        match v["no_keys_error"].as_str() {
            Some(error) => {
                let e = decode(&bytes).unwrap_err().to_string();
                assert!(
                    e.contains(error) && e.contains(env.key_id.as_deref().unwrap()),
                    "{name}: {e}"
                );
            }
            None => assert_eq!(decode(&bytes).unwrap(), env, "{name}: opens without keys"),
        }
    }
}
