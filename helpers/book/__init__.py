"""Publishing the book: the chapter runner and its parameter rules, the study every
chapter loads, artefact names, results gathering, stamps, display and plots."""
