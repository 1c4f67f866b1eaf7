//! Voucherify's standard customer fields, spelled out once: the
//! `customers.csv` column, the field's name in a request body and in a plan
//! (`address.city`), its name in a customer export (`address_city`), and its
//! column in a CSV import (`Address_City`). Every client module that lists
//! fields reads this table: the customers file's columns
//! ([`crate::records::COLUMNS`]), the plan's export and comparison, and the
//! import files. (The sandbox keeps its own lists, written from the vendor's
//! documents: it never borrows client code.)

/// One standard customer field (besides `source_id` and `metadata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The `customers.csv` column.
    pub column: &'static str,
    /// The field in a request body and a plan: `name`, `address.city`.
    pub path: &'static str,
    /// The customer export's field name (`POST /v1/exports` `fields`).
    pub export: &'static str,
    /// The standard column of a CSV import (`POST /v1/customers/importCSV`).
    pub import: &'static str,
    /// Compared as a date (`YYYY-MM-DD` and the date part of a date-time);
    /// every other standard field is a string compared exactly.
    pub date: bool,
}

const fn text(column: &'static str, path: &'static str, import: &'static str) -> Field {
    Field {
        column,
        path,
        export: column,
        import,
        date: false,
    }
}

/// The standard fields, in the customers file's column order.
pub const STANDARD: [Field; 11] = [
    text("name", "name", "Name"),
    text("email", "email", "Email"),
    text("phone", "phone", "Phone"),
    Field {
        date: true,
        ..text("birthdate", "birthdate", "Birthdate")
    },
    text("description", "description", "Description"),
    text("address_line_1", "address.line_1", "Address_line_1"),
    text("address_line_2", "address.line_2", "Address_line_2"),
    text("address_city", "address.city", "Address_City"),
    text("address_state", "address.state", "Address_State"),
    text(
        "address_postal_code",
        "address.postal_code",
        "Address_Postal_Code",
    ),
    text("address_country", "address.country", "Address_Country"),
];

/// The identifier: its column, body field and export field are `source_id`;
/// the import's column is `Source_id`.
pub const SOURCE_ID: &str = "source_id";
pub const SOURCE_ID_IMPORT: &str = "Source_id";

/// The field a plan names `path`, if standard.
pub fn by_path(path: &str) -> Option<(usize, &'static Field)> {
    STANDARD.iter().enumerate().find(|(_, f)| f.path == path)
}

/// The fields a plan asks a customer export for: the source id, the
/// standard fields, `updated_at` and the schema's metadata.
pub fn export_fields() -> Vec<&'static str> {
    let mut out = vec![SOURCE_ID];
    out.extend(STANDARD.iter().map(|f| f.export));
    out.extend(["updated_at", "metadata"]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_contracts_names() {
        // docs/DESIGN.md (the contract): customers.csv's columns, and the
        // export's customer fields, spelled here by hand.
        let columns: Vec<&str> = STANDARD.iter().map(|f| f.column).collect();
        assert_eq!(
            columns,
            [
                "name",
                "email",
                "phone",
                "birthdate",
                "description",
                "address_line_1",
                "address_line_2",
                "address_city",
                "address_state",
                "address_postal_code",
                "address_country"
            ]
        );
        // The import's standard columns, as Voucherify's guide lists them.
        let import: Vec<&str> = STANDARD.iter().map(|f| f.import).collect();
        assert_eq!(
            import.join(","),
            "Name,Email,Phone,Birthdate,Description,Address_line_1,Address_line_2,Address_City,Address_State,Address_Postal_Code,Address_Country"
        );
        for f in &STANDARD {
            assert_eq!(f.path.replace('.', "_"), f.column, "{f:?}");
        }
        assert_eq!(export_fields().len(), 14);
    }
}
