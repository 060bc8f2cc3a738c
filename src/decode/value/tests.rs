//! Value parser tests: every type's text form, edge values, malformed input.

use super::*;

fn p(kind: TypeKind, text: &str) -> Value<'_> {
    parse_text(&kind, text.as_bytes()).unwrap()
}

#[test]
fn scalars() {
    assert_eq!(p(TypeKind::Bool, "t"), Value::Bool(true));
    assert_eq!(
        p(TypeKind::Int, "-9223372036854775808"),
        Value::Int(i64::MIN)
    );
    assert_eq!(p(TypeKind::Float4, "1.1"), Value::Float32(1.1));
    assert!(matches!(p(TypeKind::Float8, "NaN"), Value::Float64(f) if f.is_nan()));
    assert_eq!(
        p(TypeKind::Float8, "-Infinity"),
        Value::Float64(f64::NEG_INFINITY)
    );
    assert_eq!(
        p(
            TypeKind::Numeric,
            "-12345678901234567890.000000000000000001"
        ),
        Value::Str("-12345678901234567890.000000000000000001".into())
    );
    assert_eq!(
        p(TypeKind::Bytea, "\\x00ff10"),
        Value::Bin(vec![0, 255, 16])
    );
    assert_eq!(
        p(TypeKind::Json, r#"{"a":[1,2.5,null]}"#),
        Value::Json(crate::wire::Json::Object(vec![(
            "a".into(),
            crate::wire::Json::Array(vec![
                crate::wire::Json::Number("1".into()),
                crate::wire::Json::Number("2.5".into()),
                crate::wire::Json::Null
            ])
        )]))
    );
    assert!(parse_text(&TypeKind::Int, b"12x").is_err());
    assert!(parse_text(&TypeKind::Bytea, b"\\x0").is_err());
    assert!(parse_text(&TypeKind::Bool, b"yes").is_err());
}

#[test]
fn timestamps_including_infinity_and_bc() {
    let ts = |s: &str| match p(TypeKind::TimestampTz, s) {
        Value::Timestamp(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        ts("1970-01-01 00:00:00+00"),
        Timestamp {
            seconds: 0,
            nanos: 0
        }
    );
    assert_eq!(
        ts("2024-02-29 12:34:56.789012+00"),
        Timestamp {
            seconds: 1_709_210_096,
            nanos: 789_012_000
        }
    );
    assert_eq!(ts("2024-02-29 14:34:56+02").seconds, 1_709_210_096);
    assert_eq!(ts("2024-02-29 12:04:56-00:30").seconds, 1_709_210_096);
    assert_eq!(ts("infinity"), Timestamp::INFINITY);
    assert_eq!(ts("-infinity"), Timestamp::NEG_INFINITY);
    // 0001-01-01 BC is astronomical year 0: -62167219200 s, an independent constant
    // (what `date -u -d 0000-01-01 +%s` prints).
    assert_eq!(ts("0001-01-01 00:00:00+00 BC").seconds, -62_167_219_200);
    assert_eq!(ts("1969-12-31 23:59:59.5+00").seconds, -1);
    assert_eq!(
        match p(TypeKind::Timestamp, "10000-01-01 00:00:00") {
            Value::Timestamp(t) => t.seconds,
            _ => 0,
        },
        253_402_300_800
    );
}

#[test]
fn timestamp_ext_round_trips_in_all_three_widths() {
    for t in [
        Timestamp {
            seconds: 5,
            nanos: 0,
        },
        Timestamp {
            seconds: 1_709_210_096,
            nanos: 789_012_000,
        },
        Timestamp {
            seconds: -1,
            nanos: 500_000_000,
        },
        Timestamp::INFINITY,
        Timestamp::NEG_INFINITY,
    ] {
        let bytes = t.ext_bytes();
        assert_eq!(Timestamp::from_ext_bytes(&bytes), Some(t));
    }
    assert_eq!(
        Timestamp {
            seconds: 5,
            nanos: 0
        }
        .ext_bytes()
        .len(),
        4
    );
    assert_eq!(Timestamp::INFINITY.ext_bytes().len(), 12);
}

#[test]
fn intervals() {
    let iv = |s: &'static str| p(TypeKind::Interval, s);
    assert_eq!(
        iv("P1Y2M3DT4H5M6.5S"),
        Value::Interval {
            months: 14,
            days: 3,
            microseconds: 4 * 3_600_000_000 + 5 * 60_000_000 + 6_500_000
        }
    );
    assert_eq!(
        iv("PT0S"),
        Value::Interval {
            months: 0,
            days: 0,
            microseconds: 0
        }
    );
    assert_eq!(
        iv("P-1Y-2M3DT-4H-5M-6.000001S"),
        Value::Interval {
            months: -14,
            days: 3,
            microseconds: -(4 * 3_600_000_000 + 5 * 60_000_000 + 6_000_001)
        }
    );
    assert!(parse_text(&TypeKind::Interval, b"1 day").is_err());
}

#[test]
fn arrays_with_nulls_quotes_and_dimensions() {
    let int_arr = TypeKind::Array {
        element: Box::new(TypeKind::Int),
        delimiter: b',',
    };
    assert_eq!(
        p(int_arr.clone(), "{{1,NULL},{3,4}}"),
        Value::Array(vec![
            Value::Array(vec![Value::Int(1), Value::Null]),
            Value::Array(vec![Value::Int(3), Value::Int(4)]),
        ])
    );
    assert_eq!(p(int_arr.clone(), "{}"), Value::Array(vec![]));
    assert_eq!(
        p(int_arr.clone(), "[0:1]={7,8}"),
        Value::BoundedArray {
            lower_bounds: vec![0],
            elements: vec![Value::Int(7), Value::Int(8)]
        }
    );
    assert_eq!(
        p(int_arr.clone(), "[1:1][-2:-1]={{7,8}}"),
        Value::BoundedArray {
            lower_bounds: vec![1, -2],
            elements: vec![Value::Array(vec![Value::Int(7), Value::Int(8)])]
        }
    );
    assert!(parse_text(&int_arr, b"[0:1={7,8}").is_err());
    assert!(parse_text(&int_arr, b"[x:1]={7,8}").is_err());
    let text_arr = TypeKind::Array {
        element: Box::new(TypeKind::Text),
        delimiter: b',',
    };
    assert_eq!(
        p(
            text_arr.clone(),
            r#"{"a,b","say \"hi\"","NULL",NULL,plain,""}"#
        ),
        Value::Array(vec![
            Value::Str("a,b".into()),
            Value::Str("say \"hi\"".into()),
            Value::Str("NULL".into()),
            Value::Null,
            Value::Str("plain".into()),
            Value::Str("".into()),
        ])
    );
    let bytea_arr = TypeKind::Array {
        element: Box::new(TypeKind::Bytea),
        delimiter: b',',
    };
    assert_eq!(
        p(bytea_arr, r#"{"\\x0001",NULL}"#),
        Value::Array(vec![Value::Bin(vec![0, 1]), Value::Null])
    );
    let box_arr = TypeKind::Array {
        element: Box::new(TypeKind::Text),
        delimiter: b';',
    };
    assert_eq!(
        p(box_arr, "{(1,1),(0,0);(2,2),(1,1)}"),
        Value::Array(vec![
            Value::Str("(1,1),(0,0)".into()),
            Value::Str("(2,2),(1,1)".into())
        ])
    );
    for bad in ["{1,2", "{1,2}x", "1,2", "{\"a}", "{{{{{{{{1}}}}}}}}"] {
        assert!(parse_text(&int_arr, bad.as_bytes()).is_err(), "{bad}");
    }
}
