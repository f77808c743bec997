use super::*;

fn token(uses_allowed: Option<u32>, uses: u32) -> JoinTokenRecord {
    JoinTokenRecord {
        id: "0123456789ab".into(),
        secret_sha256: [7; 32],
        created_at: Timestamp::from_second(1_000).unwrap(),
        expires_at: Timestamp::from_second(2_000).unwrap(),
        uses_allowed,
        uses,
        labels: Labels::new(),
        description: String::new(),
        created_by: "admin".into(),
    }
}

#[test]
fn join_token_rules() {
    let now = Timestamp::from_second(1_500).unwrap();
    assert_eq!(check_join_token(&token(None, 99), &[7; 32], now), Ok(()));
    assert_eq!(check_join_token(&token(Some(2), 1), &[7; 32], now), Ok(()));
    assert!(matches!(check_join_token(&token(Some(2), 2), &[7; 32], now), Err(EnrollRefusal::UsedUp { .. })));
    assert!(matches!(
        check_join_token(&token(None, 0), &[8; 32], now),
        Err(EnrollRefusal::WrongSecret { .. })
    ));
    let later = Timestamp::from_second(2_000).unwrap();
    assert!(matches!(check_join_token(&token(None, 0), &[7; 32], later), Err(EnrollRefusal::Expired { .. })));
}
