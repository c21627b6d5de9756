use super::*;

#[test]
fn verhoeff_known_values() {
    // Published example: 236 → check digit 3.
    assert_eq!(verhoeff::check_digit("236"), 3);
    assert!(verhoeff::validate("2363"));
    assert!(!verhoeff::validate("2364"));
    let body = "23456789012";
    let full = format!("{body}{}", verhoeff::check_digit(body));
    assert!(Aadhaar::parse(&full).is_ok());
}

#[test]
fn aadhaar_rules() {
    let body = "49876543210";
    let good = format!("{body}{}", verhoeff::check_digit(body));
    let a = Aadhaar::parse(&format!("{} {} {}", &good[..4], &good[4..8], &good[8..])).unwrap();
    assert_eq!(a.expose(), good);
    assert_eq!(a.masked(), format!("XXXX-XXXX-{}", &good[8..]));
    assert!(!format!("{a:?}").contains(&good[..8]));
    let bad_digit = (good.as_bytes()[11] - b'0' + 1) % 10;
    let bad = format!("{body}{bad_digit}");
    assert_eq!(Aadhaar::parse(&bad), Err(IdError::AadhaarChecksum));
    assert_eq!(Aadhaar::parse("12345"), Err(IdError::AadhaarLength));
    assert_eq!(
        Aadhaar::parse("123456789012"),
        Err(IdError::AadhaarLeadingDigit)
    );
    assert_eq!(Aadhaar::parse(""), Err(IdError::Empty));
}

#[test]
fn abha_number_normalises() {
    let a = AbhaNumber::parse("91123456789012").unwrap();
    assert_eq!(a.expose(), "91-1234-5678-9012");
    assert_eq!(AbhaNumber::parse("91-1234-5678-9012").unwrap(), a);
    assert_eq!(a.masked(), "XX-XXXX-XXXX-9012");
    assert_eq!(format!("{a}"), "XX-XXXX-XXXX-9012");
    assert_eq!(AbhaNumber::parse("91-1234-5678"), Err(IdError::AbhaNumber));
    assert_eq!(
        AbhaNumber::parse("91-1234-5678-901a"),
        Err(IdError::AbhaNumber)
    );
}

#[test]
fn mobile_rules() {
    assert_eq!(
        Mobile::parse("+91 98765 43210").unwrap().expose(),
        "9876543210"
    );
    assert_eq!(Mobile::parse("09876543210").unwrap().expose(), "9876543210");
    assert_eq!(Mobile::parse("5876543210"), Err(IdError::Mobile));
    assert_eq!(Mobile::parse("98765"), Err(IdError::Mobile));
    assert_eq!(Mobile::parse("9876543210").unwrap().masked(), "XXXXXX3210");
}

#[test]
fn dates_and_gender() {
    let today = NaiveDate::from_ymd_opt(2026, 1, 10).unwrap();
    assert_eq!(
        parse_past_date("05-01-2026", today).unwrap(),
        NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()
    );
    assert_eq!(parse_past_date("31-02-2020", today), Err(IdError::Date));
    assert_eq!(
        parse_past_date("11-01-2026", today),
        Err(IdError::FutureDate)
    );
    assert_eq!(parse_past_date("2020-01-01", today), Err(IdError::Date));
    assert_eq!(Gender::parse("f").unwrap(), Gender::F);
    assert_eq!(Gender::parse("X"), Err(IdError::Gender));
}

#[test]
fn scrub_masks_long_digit_runs_only() {
    assert_eq!(
        scrub_digits("ABHA 91-1234-5678-9012 not found, code 1114"),
        "ABHA XX-XXXX-XXXX-9012 not found, code 1114"
    );
    assert_eq!(scrub_digits("mobile 9876543210"), "mobile XXXXXX3210");
}

#[test]
fn abha_numbers_start_with_91_and_addresses_are_named() {
    assert_eq!(
        AbhaNumber::parse("12345678901234"),
        Err(IdError::AbhaPrefix)
    );
    assert_eq!(
        AbhaNumber::parse("ravi.kumar@sbx"),
        Err(IdError::AbhaAddress)
    );
    assert_eq!(
        AbhaNumber::parse("91216855772770@sbx"),
        Err(IdError::AbhaAddress)
    );
    assert!(IdError::AbhaAddress.to_string().contains("14-digit"));
}

#[test]
fn dates_before_1900_say_so() {
    let today = NaiveDate::from_ymd_opt(2026, 1, 10).unwrap();
    assert_eq!(
        parse_past_date("31-12-1899", today),
        Err(IdError::DateBefore1900)
    );
    assert!(parse_past_date("01-01-1900", today).is_ok());
    assert!(IdError::DateBefore1900.to_string().contains("1900"));
}

#[test]
fn x_tokens_refuse_what_a_header_cannot_carry() {
    for bad in [
        "abc.def\nX-Evil: 1",
        "abc.def\r\nX-Evil: 1",
        "abc def",
        "abc\u{0}def",
        "abc.déf",
    ] {
        assert_eq!(XToken::parse(bad), Err(IdError::XToken), "{bad:?}");
    }
    assert!(XToken::parse("Bearer eyJhbGciOi.eyJzdWIi.sig-_~+/=").is_ok());
    assert!(XToken::parse(&"a".repeat(8193)).is_err());
}

#[test]
fn names_and_tokens_are_masked() {
    let n = PersonName::parse("  Ravi   Kumar ").unwrap();
    assert_eq!(n.expose(), "Ravi Kumar");
    assert_eq!(format!("{n:?}"), "PersonName(R*** K***)");
    assert_eq!(PersonName::parse("R2D2"), Err(IdError::Name));
    let t = XToken::parse("Bearer abc.def").unwrap();
    assert_eq!(t.expose(), "abc.def");
    assert_eq!(format!("{t}"), "***");
}
