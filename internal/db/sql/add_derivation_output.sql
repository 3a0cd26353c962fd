insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?);
