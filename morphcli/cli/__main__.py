from morphcli.cli import main

main()
