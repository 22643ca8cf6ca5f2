from boxui.cli.main import main

main()
