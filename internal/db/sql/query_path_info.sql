select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?;
