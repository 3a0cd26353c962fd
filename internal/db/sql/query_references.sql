select path from Refs join ValidPaths on reference = id where referrer = ?;
