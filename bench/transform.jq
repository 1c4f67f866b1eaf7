# The peer a user would otherwise reach for: segsync's mapping as a jq
# one-liner over profiles.ndjson, printing customers.csv rows (header added
# by the caller). Run: jq -r -f bench/transform.jq profiles.ndjson
# Simpler than segsync: no date validity check beyond the shape, no
# duplicate handling, no rejected.csv, no formula guard.
def txt: if type == "string" and length > 0 then . elif type == "number" then tostring else null end;
.traits as $t
| ($t.address | if type == "object" then . else $t end) as $a
| ([.external_ids[]? | select(.type == "user_id") | .id | txt | select(. != null)] | first) as $sid
| select($sid != null)
| [ $sid,
    (($t.name | txt) // ([($t.firstName | txt) // ($t.first_name | txt), ($t.lastName | txt) // ($t.last_name | txt)] | map(select(. != null)) | join(" ") | select(length > 0)) // null),
    ($t.email | txt), ($t.phone | txt),
    (((($t.birthdate | txt) // ($t.birthday | txt)) | select(. != null and test("^[0-9]{4}-[0-9]{2}-[0-9]{2}(T.*)?$")) | .[0:10]) // null),
    ($t.description | txt),
    (($a.street | txt) // ($a.line_1 | txt)), ($a.line_2 | txt), ($a.city | txt), ($a.state | txt),
    (($a.postalCode | txt) // ($a.postal_code | txt)), ($a.country | txt),
    (($t.metadata | select(type == "object" and length > 0) | tojson) // null),
    .segment_id ]
| @csv
