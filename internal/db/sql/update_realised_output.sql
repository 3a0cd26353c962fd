update Realisations set signatures = ? where drvPath = ? and outputName = ?;
