insert or replace into Refs (referrer, reference) values (?, ?);
