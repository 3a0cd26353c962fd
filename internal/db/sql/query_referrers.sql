select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?);
