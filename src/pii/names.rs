//! Which characters a person's name may hold: letters of every script in use in India with
//! the combining marks and joiners those scripts need.

/// Zero width joiner and non-joiner: choose conjunct, half or chillu forms in Indic scripts.
const ZWJ: char = '\u{200D}';
const ZWNJ: char = '\u{200C}';

/// Letters, and marks or joiners that follow a letter (never at the start of a word).
pub(super) fn valid_name_chars(name: &str) -> bool {
    let mut prev_in_word = false;
    for c in name.chars() {
        let in_word = if c.is_alphabetic() {
            true
        } else if unicode_normalization::char::is_combining_mark(c) || matches!(c, ZWJ | ZWNJ) {
            if !prev_in_word {
                return false;
            }
            true
        } else if matches!(c, ' ' | '.' | '\'' | '-') {
            false
        } else {
            return false;
        };
        prev_in_word = in_word;
    }
    true
}

#[cfg(test)]
mod tests {
    use crate::pii::{IdError, PersonName};

    /// Names in every major script of India (and Latin with accents) are accepted; the
    /// combining marks (matras, virama, nukta) and joiners they need are letters here.
    #[test]
    fn names_in_indian_scripts_are_accepted() {
        let corpus = [
            // Devanagari (Hindi, Marathi, ...): virama, nukta, matras.
            "प्रिया शर्मा",
            "कृष्ण",
            "गुरप्रीत सिंह ज़ैल",
            "रवि कुमार",
            "क्\u{200C}ष",
            "र्\u{200D}य",
            // Bengali / Assamese.
            "সুব্রত মুখোপাধ্যায়",
            "ৰূপজ্যোতি",
            // Gurmukhi.
            "ਗੁਰਪ੍ਰੀਤ",
            "ਹਰਜੀਤ ਸਿੰਘ",
            // Gujarati.
            "કૃષ્ણ પટેલ",
            // Odia.
            "ପ୍ରିୟଙ୍କା ମହାନ୍ତି",
            // Tamil.
            "ஸ்ரீ",
            "முருகன் செல்வம்",
            // Telugu.
            "శ్రీనివాస్ రెడ్డి",
            // Kannada.
            "ಕನ್ನಡ",
            "ಲಕ್ಷ್ಮೀ",
            // Malayalam, atomic chillu and the older virama + ZWJ spelling.
            "ലക്ഷ്മി നായർ",
            "നായര്\u{200D}",
            // Urdu (Perso-Arabic), Ol Chiki (Santali), Meetei Mayek (Manipuri).
            "محمد عارف",
            "ᱥᱟᱱᱛᱟᱲᱤ",
            "ꯃꯩꯇꯩ",
            // Latin with diacritics, apostrophes, hyphens, dots.
            "Rénu Nuñez",
            "Zoë O'Brien-Smith",
            "A. P. J. Abdul Kalam",
        ];
        for name in corpus {
            let parsed = PersonName::parse(name)
                .unwrap_or_else(|e| panic!("{} rejected: {e}", name.escape_unicode()));
            assert!(!format!("{parsed:?}").contains(name));
        }
    }

    #[test]
    fn names_are_nfc_so_two_encodings_are_one_name() {
        // é precomposed vs e + combining acute.
        let a = PersonName::parse("Rénu").unwrap();
        let b = PersonName::parse("Re\u{301}nu").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.expose(), "R\u{e9}nu");
        // Devanagari ज़ as one code point (U+095B) vs ज + nukta (NFC keeps the pair).
        let c = PersonName::parse("\u{95B}ैल").unwrap();
        let d = PersonName::parse("\u{91C}\u{93C}ैल").unwrap();
        assert_eq!(c, d);
        // Tamil ொ as one code point vs its two parts.
        let e = PersonName::parse("\u{B95}\u{BCA}").unwrap();
        let f = PersonName::parse("\u{B95}\u{BC6}\u{BBE}").unwrap();
        assert_eq!(e, f);
    }

    #[test]
    fn names_still_refuse_digits_controls_and_junk() {
        for bad in [
            "R2D2",
            "रवि१",
            "=SUM(A1)",
            "Ravi\u{7}",
            "Ravi\u{202E}Kumar",
            "@Ravi",
            "\u{94D}रवि",
            "रवि \u{93C}",
            "\u{200D}कृष्ण",
            "Ravi_Kumar",
        ] {
            assert_eq!(
                PersonName::parse(bad),
                Err(IdError::Name),
                "{}",
                bad.escape_unicode()
            );
        }
        assert_eq!(PersonName::parse(&"अ".repeat(101)), Err(IdError::Name));
        assert!(PersonName::parse(&"अ".repeat(100)).is_ok());
    }
}
