select drvPath, outputName from Realisations join RealisationsRefs on realisationReference = Realisations.id where referrer = ?;
