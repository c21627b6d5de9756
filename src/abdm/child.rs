//! Child ABHA: create with the parent's X-token, list, update (integrator guide §11.7).

use chrono::{Datelike, NaiveDate};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::abdm::client::AbdmClient;
use crate::abdm::error::ClientError;
use crate::abdm::profile::Profile;
use crate::abdm::trace::{CallTrace, Operation};
use crate::abdm::transport::{Body, Request};
use crate::pii::{AbhaNumber, Gender, PersonName, Sensitive, XToken, format_date};

/// A child to enrol under a parent.
#[derive(Debug, Clone)]
pub struct ChildDetails {
    /// Child's name.
    pub name: PersonName,
    /// Date of birth.
    pub birth_date: NaiveDate,
    /// Gender.
    pub gender: Gender,
}

impl ChildDetails {
    /// The `authData.child` object of the request.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dayOfBirth": self.birth_date.day().to_string(),
            "monthOfBirth": self.birth_date.month().to_string(),
            "yearOfBirth": self.birth_date.year().to_string(),
            "gender": self.gender.as_str(),
            "name": self.name.expose(),
            "parentConsent": "true",
        })
    }
}

/// The new child's profile.
#[derive(Debug, Clone, Deserialize)]
pub struct ChildProfile {
    /// The child's ABHA number.
    #[serde(rename = "ABHANumber", default)]
    pub abha_number: Sensitive,
    /// `CHILD`.
    #[serde(rename = "abhaType", default)]
    pub abha_type: Option<String>,
    /// Date of birth as ABDM writes it.
    #[serde(default)]
    pub dob: Option<Sensitive>,
}

/// Answer of the child creation.
#[derive(Debug, Clone, Deserialize)]
pub struct ChildCreated {
    /// ABDM's message.
    #[serde(default)]
    pub message: String,
    /// The child's profile.
    #[serde(rename = "ABHAProfile")]
    pub profile: ChildProfile,
    /// False when ABDM found the child already enrolled.
    #[serde(rename = "isNew", default = "yes")]
    pub is_new: bool,
}

fn yes() -> bool {
    true
}

/// One child in the parent's list.
#[derive(Debug, Clone, Deserialize)]
pub struct ChildSummary {
    /// `d-m-yyyy` as ABDM writes it.
    #[serde(rename = "dateOfBirth", default)]
    pub date_of_birth: Sensitive,
    /// Name.
    #[serde(default)]
    pub name: Sensitive,
    /// Gender.
    #[serde(default)]
    pub gender: Option<String>,
    /// ABHA number.
    #[serde(rename = "ABHANumber", default)]
    pub abha_number: Sensitive,
}

impl ChildSummary {
    /// True when this entry is the child described by `d` (same name, birth date and gender):
    /// how a creation whose answer was lost is recognised.
    pub fn matches(&self, d: &ChildDetails) -> bool {
        // ABDM may store "PRIYA  Sharma" for "Priya Sharma": compare words, ignoring case
        // and spacing, so a lost creation is recognised and not made again.
        let words = |s: &str| {
            s.split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        };
        let same_name = words(self.name.expose()) == words(d.name.expose());
        let same_gender = self
            .gender
            .as_deref()
            .is_none_or(|g| g.eq_ignore_ascii_case(d.gender.as_str()));
        let same_date = parse_loose_date(self.date_of_birth.expose()) == Some(d.birth_date);
        same_name && same_gender && same_date
    }
}

fn parse_loose_date(s: &str) -> Option<NaiveDate> {
    let mut it = s.split('-').map(|p| p.parse::<u32>().ok());
    let (d, m, y) = (it.next()??, it.next()??, it.next()??);
    NaiveDate::from_ymd_opt(y as i32, m, d)
}

/// Answer of the children list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Children {
    /// Parent's ABHA number.
    #[serde(default)]
    pub parent_abha_number: Sensitive,
    /// How many children.
    #[serde(default)]
    pub children_count: u32,
    /// The children.
    #[serde(default)]
    pub children: Vec<ChildSummary>,
}

/// `PATCH /v3/profile/account` for a child ABHA.
#[derive(Debug, Clone)]
pub struct ChildUpdate {
    /// The child's ABHA number.
    pub abha_number: AbhaNumber,
    /// Name.
    pub name: PersonName,
    /// Date of birth.
    pub birth_date: NaiveDate,
    /// Gender.
    pub gender: Gender,
}

impl AbdmClient {
    /// `POST /v3/enrollment/enrol/byAadhaar` with `authMethods: ["child"]` and the parent's
    /// X-token.
    pub async fn create_child(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        parent: &XToken,
        child: &ChildDetails,
    ) -> Result<ChildCreated, ClientError> {
        let body = json!({
            "authData": { "authMethods": ["child"], "child": child.to_json() },
            "consent": { "code": "abha-enrollment", "version": "1.4" },
        });
        self.execute(
            trace,
            Request {
                op: Operation::ChildCreate,
                method: Method::POST,
                path: "/v3/enrollment/enrol/byAadhaar".into(),
                benefit: Some(benefit),
                x_token: Some(parent),
                body: Body::Plain(body),
            },
        )
        .await
    }

    /// `/v3/enrollment/profile/children` (GET or POST by configuration) with the parent's
    /// X-token.
    pub async fn list_children(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        parent: &XToken,
    ) -> Result<Children, ClientError> {
        self.execute(
            trace,
            Request {
                op: Operation::ChildList,
                method: if self.children_list_post {
                    Method::POST
                } else {
                    Method::GET
                },
                path: "/v3/enrollment/profile/children".into(),
                benefit: Some(benefit),
                x_token: Some(parent),
                body: Body::Empty,
            },
        )
        .await
    }

    /// `PATCH /v3/profile/account` for a child: name, date of birth, gender.
    pub async fn update_child(
        &self,
        trace: &mut CallTrace,
        benefit: &str,
        update: &ChildUpdate,
    ) -> Result<Profile, ClientError> {
        let body = json!({
            "abhaNumber": update.abha_number.expose(),
            "name": update.name.expose(),
            "dob": format_date(update.birth_date),
            "gender": update.gender.as_str(),
        });
        self.execute(
            trace,
            Request {
                op: Operation::ChildUpdate,
                method: Method::PATCH,
                path: "/v3/profile/account".into(),
                benefit: Some(benefit),
                x_token: None,
                body: Body::Plain(body),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::{Gender, PersonName};

    #[test]
    fn a_listed_child_matches_whatever_its_case_and_spacing() {
        let asked = ChildDetails {
            name: PersonName::parse("Meera Devi").unwrap(),
            birth_date: NaiveDate::from_ymd_opt(2021, 3, 4).unwrap(),
            gender: Gender::F,
        };
        let listed = |name: &str, dob: &str, gender: &str| ChildSummary {
            date_of_birth: Sensitive::new(dob),
            name: Sensitive::new(name),
            gender: Some(gender.into()),
            abha_number: Sensitive::new("91-0000-0000-0000"),
        };
        assert!(listed("MEERA  devi", "04-03-2021", "f").matches(&asked));
        assert!(listed(" Meera Devi ", "4-3-2021", "F").matches(&asked));
        assert!(!listed("Meera", "04-03-2021", "F").matches(&asked));
        assert!(!listed("Meera Devi", "05-03-2021", "F").matches(&asked));
        assert!(!listed("Meera Devi", "04-03-2021", "M").matches(&asked));
    }
}
