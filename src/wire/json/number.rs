//! How a JSON number travels: an integer, a float 64 when that loses no digit, or
//! else its exact decimal text (see the table in `docs/envelope.md`).

/// How a JSON number travels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumberForm<'a> {
    Int(i64),
    UInt(u64),
    Float(f64),
    /// The exact decimal text.
    Text(&'a str),
}

/// The form a JSON number's text travels in (see the module documentation).
pub fn number_form(text: &str) -> NumberForm<'_> {
    if let Ok(i) = text.parse::<i64>() {
        return NumberForm::Int(i);
    }
    if let Ok(u) = text.parse::<u64>() {
        return NumberForm::UInt(u);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && same_decimal(text, &format!("{f:e}")) => NumberForm::Float(f),
        _ => NumberForm::Text(text),
    }
}

/// Whether two decimal texts denote the same number.
fn same_decimal(a: &str, b: &str) -> bool {
    normalize(a) == normalize(b)
}

/// (negative, significant digits without leading or trailing zeros, exponent of the
/// first digit); zero is `(false, "", 0)`.
fn normalize(text: &str) -> Option<(bool, String, i64)> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = int.chars().chain(frac.chars()).collect();
    if !all.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let lead = all.bytes().take_while(|&c| c == b'0').count();
    let digits = all[lead..].trim_end_matches('0');
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    let point = int.len() as i64 - lead as i64 + exp;
    Some((neg, digits.to_string(), point))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of `docs/envelope.md` ("Exact JSON numbers").
    #[test]
    fn numbers_travel_exactly() {
        use NumberForm::*;
        for (text, form) in [
            ("42", Int(42)),
            ("-9223372036854775808", Int(i64::MIN)),
            ("18446744073709551615", UInt(u64::MAX)),
            ("0.1", Float(0.1)),
            ("2.5", Float(2.5)),
            ("-0.0", Float(-0.0)),
            ("1e30", Float(1e30)),
            ("1000000000000000000000000000000", Float(1e30)),
            ("1E+300", Float(1e300)),
            (
                "3.141592653589793238462643383279",
                Text("3.141592653589793238462643383279"),
            ),
            (
                "100000000000000000000000000001",
                Text("100000000000000000000000000001"),
            ),
            ("18446744073709551616", Text("18446744073709551616")),
            ("1e400", Text("1e400")),
            ("0.30000000000000004", Float(0.30000000000000004)),
            ("0.3000000000000000444", Text("0.3000000000000000444")),
        ] {
            assert_eq!(number_form(text), form, "{text}");
        }
    }

    /// The table in docs/envelope.md says the same as `number_form`.
    #[test]
    fn documentation_lists_the_same_forms() {
        let doc = include_str!("../../../docs/envelope.md");
        let section = doc
            .split("### Exact JSON numbers")
            .nth(1)
            .and_then(|s| s.split("###").next())
            .expect("the section");
        let mut checked = 0;
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let form = cells[2];
            for number in cells[1].split('`').skip(1).step_by(2) {
                let got = match number_form(number) {
                    NumberForm::Int(_) | NumberForm::UInt(_) => "int",
                    NumberForm::Float(_) => "float 64",
                    NumberForm::Text(t) if t == number => "str (the text as written)",
                    NumberForm::Text(_) => "str, altered",
                };
                assert_eq!(got, form, "{number}");
                checked += 1;
            }
        }
        assert!(checked >= 15, "only {checked} numbers in the documentation");
    }
}
