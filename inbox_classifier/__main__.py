from inbox_classifier.cli import main

main()
